module ccbridge/bench/loadgen

go 1.21
