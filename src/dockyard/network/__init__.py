"""Container networking: bridges, veth pairs, addresses, published ports, DNS.

Below the engine (it imports storage and runtime only). Modules:

- store.py   networks, endpoints (addresses in use) and port mappings in the DB;
             IPAM: an address is handed out under the DB's write lock and the
             UNIQUE (network_id, ip) constraint, so never twice
- links.py   the kernel side: bridges, veth pairs into a container's network
             namespace, addresses, routes, sysctls (iproute2's `ip -batch`)
- nft.py     NAT and filtering in dockyard's own nftables table (libnftables,
             JSON): masquerade, DNAT of published ports (also from 127.0.0.1
             and hairpin), isolation between networks, internal networks;
             rendered whole from the DB's state and swapped in one transaction
- ports.py   parsing -p/--publish and picking free host ports
- dns.py     the DNS server of user-defined networks (one process for all of
             them, listening on each bridge's gateway address)
"""
