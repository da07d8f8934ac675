"""`--change` lines applied to an image config, as `docker import --change` does."""

from __future__ import annotations

import pytest

from dockyard.image.changes import ChangeError, apply_changes
from dockyard.oci.image_spec import chain_ids, digest_of


def test_every_instruction() -> None:
    config = apply_changes(
        {"Env": ["PATH=/bin", "A=old"]},
        [
            'CMD ["nginx", "-g", "daemon off;"]',
            "ENTRYPOINT /docker-entrypoint.sh",
            "ENV A=new B=2",
            "ENV C three words",
            'LABEL maintainer="me <me@example.com>" version=1',
            "EXPOSE 80 53/udp",
            'VOLUME ["/data", "/logs"]',
            "USER nobody",
            "WORKDIR /srv",
            "STOPSIGNAL SIGQUIT",
            "onbuild RUN true",
        ],
    )
    assert config == {
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Entrypoint": ["/bin/sh", "-c", "/docker-entrypoint.sh"],
        "Env": ["PATH=/bin", "A=new", "B=2", "C=three words"],
        "Labels": {"maintainer": "me <me@example.com>", "version": "1"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/data": {}, "/logs": {}},
        "User": "nobody",
        "WorkingDir": "/srv",
        "StopSignal": "SIGQUIT",
        "OnBuild": ["RUN true"],
    }


def test_input_is_not_modified() -> None:
    original = {"Env": ["A=1"]}
    apply_changes(original, ["ENV A=2"])
    assert original == {"Env": ["A=1"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN make", "RUN is not allowed here"),
        ("FROM x", "not allowed"),
        ("", r"\(empty\) is not allowed"),
        ("CMD", "CMD needs an argument"),
        ("EXPOSE eighty", "is not PORT"),
        ("EXPOSE 80/icmp", "is not PORT"),
        ("ENV =x", "is not KEY=VALUE"),
        ("ENV A", "use KEY=VALUE"),
    ],
)
def test_bad_changes_name_the_line(line: str, message: str) -> None:
    with pytest.raises(ChangeError, match=message):
        apply_changes({}, [line])


def test_chain_ids() -> None:
    a, b, c = (digest_of(x) for x in (b"a", b"b", b"c"))
    chains = chain_ids([a, b, c])
    assert chains[0] == a
    assert chains[1] == digest_of(f"{a} {b}".encode())
    assert chains[2] == digest_of(f"{chains[1]} {c}".encode())
    assert chain_ids([]) == []
