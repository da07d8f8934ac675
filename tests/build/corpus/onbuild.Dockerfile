FROM alpine
ONBUILD ADD . /app/src
ONBUILD RUN cd /app/src && make
ONBUILD COPY --chown=app:app ["a b", "/dst/"]
ONBUILD ENV X=1 Y="2 3"
ONBUILD HEALTHCHECK NONE
