FROM alpine
ONBUILD RUN <<EOF
echo on build
EOF
RUN <<"E O F"
spaced name
E O F
RUN cat <<EOF | tr a-z A-Z
lower
EOF
RUN echo "<<NOTHEREDOC" && echo '<<NOPE'
