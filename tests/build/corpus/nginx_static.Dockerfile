FROM nginx:1.25-alpine
COPY nginx.conf /etc/nginx/nginx.conf
COPY dist/ /usr/share/nginx/html/
EXPOSE 80 443/tcp
STOPSIGNAL SIGQUIT
HEALTHCHECK CMD wget -qO- http://localhost/ || exit 1
