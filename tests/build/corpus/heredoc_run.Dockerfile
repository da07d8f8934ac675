# syntax=docker/dockerfile:1
FROM debian:bookworm
RUN <<EOF
set -e
apt-get update
apt-get install -y curl
EOF
RUN <<-EOT bash
	echo "tabs stripped"
	EOT
RUN python3 <<'PY'
print("$HOME is not expanded")
PY
