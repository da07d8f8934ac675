FROM scratch
MAINTAINER Jane Doe <jane@example.com>
ADD rootfs.tar.xz /
CMD ["/bin/sh"]
STOPSIGNAL 9
