from alpine as builder
run echo hi
copy --from=builder /a /b
env foo bar
cmd ["x"]
