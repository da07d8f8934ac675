   FROM    alpine:3.19   AS   base
	RUN	echo   spaced   out
  ENV   KEY   value with   spaces
LABEL    a=b    c="d"
EXPOSE	8080	8443/udp
  USER   1000:1000
WORKDIR   /some where
