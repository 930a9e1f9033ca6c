"""Fault injection: worker crashes, signals, lost connections and server restarts."""
