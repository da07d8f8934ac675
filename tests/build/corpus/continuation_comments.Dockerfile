FROM ubuntu:22.04
RUN apt-get update && \
    # comment in the middle
    apt-get install -y \

      vim \
    # another
      git
ENV A=1 \
    # c
    B=2
