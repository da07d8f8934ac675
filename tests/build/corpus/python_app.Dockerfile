FROM python:3.12-slim
LABEL org.opencontainers.image.title="demo app" \
      org.opencontainers.image.version=1.0 maintainer='someone <a@b.c>'
ENV PYTHONDONTWRITEBYTECODE 1
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=off
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential \
      # needed for psycopg
      libpq-dev \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/
RUN pip install -r /tmp/requirements.txt
COPY --chmod=755 entrypoint.sh /usr/local/bin/
VOLUME ["/data"]
ENTRYPOINT ["entrypoint.sh"]
CMD gunicorn -b 0.0.0.0:8000 app:app
