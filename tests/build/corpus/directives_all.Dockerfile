# syntax=docker/dockerfile:1
# check=skip=JSONArgsRecommended
# escape=`
FROM busybox
RUN echo `
  hi
