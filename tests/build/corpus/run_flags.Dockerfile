FROM alpine
RUN --mount=type=secret,id=npmrc,target=/root/.npmrc --mount=type=ssh npm ci
RUN --network=none --security=insecure echo hi
RUN --mount=type=bind,from=build,source=/out,target=/in ls /in
RUN --mount="type=cache,target=/var/cache/apt" apt-get update
RUN -- --not-a-flag
