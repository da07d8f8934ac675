# just a comment
# escape=`
FROM busybox
RUN echo \
  not continued with backslash
