FROM alpine AS src
FROM alpine
COPY --from=src --chown=1000:1000 --chmod=0644 --link /a /b
COPY --exclude=*.md --exclude=*.txt . /app
COPY --parents a/b/c ./
ADD --checksum=sha256:abc https://example.com/x.tar.gz /x
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /bk
ADD --unpack=false a.tar /a
ADD --link --chown=app ["x y", "/z"]
