FROM alpine
COPY <<EOF /etc/motd
Welcome to $HOSTNAME
EOF
COPY <<"EOF1" <<EOF2 /app/
quoted $NOPE
EOF1
plain $YES
EOF2
ADD <<EOF /x
a
EOF
