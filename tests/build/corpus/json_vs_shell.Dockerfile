FROM alpine
CMD ["echo", "hi"]
CMD [echo, hi]
CMD ['echo', 'hi']
CMD ["echo", 1]
ENTRYPOINT []
RUN [ "sh", "-c", "echo \"quoted\"" ]
RUN ["a",
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
VOLUME /a /b   /c
VOLUME ["/d", "/e"]
COPY ["src dir/", "dst/"]
