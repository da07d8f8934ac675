# leading comment
   # indented comment
FROM alpine
# RUN commented out
RUN echo hi # not a comment
