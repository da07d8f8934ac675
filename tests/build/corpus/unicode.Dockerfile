FROM alpine
LABEL description="café ☕" emoji=🚀
ENV GREETING="héllo wörld"
RUN echo "日本語"
