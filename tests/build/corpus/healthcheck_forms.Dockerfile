FROM alpine
HEALTHCHECK NONE
HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1
HEALTHCHECK --start-interval=1s CMD ["curl", "-f", "http://localhost/"]
HEALTHCHECK   CMD   [ "a" ,"b" ]
