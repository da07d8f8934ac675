FROM alpine
RUN echo foo \\
RUN echo next
ENV X=a\ b Y="c\"d"
