FROM alpine
RUN echo end