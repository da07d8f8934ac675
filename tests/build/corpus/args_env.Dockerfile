ARG BASE=alpine:3.19
ARG A B=2 C="three four" D='five'
FROM ${BASE}
ARG VERSION
ENV VERSION=${VERSION:-dev} EMPTY= QUOTED="a \"b\" c" SINGLE='x y'
ENV OLD some value here
LABEL "com.example.vendor"="ACME Inc" version=1.0 description="This text \
spans lines"
