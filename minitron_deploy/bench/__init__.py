"""Throughput benchmarking of pruned vs unpruned models."""
