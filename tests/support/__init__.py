"""What the tests and the benchmarks both need to run real processes on 127.0.0.1: free ports
(``ports``) and private ``redis-server`` instances (``redis``). One home, so the two do not drift
apart."""
