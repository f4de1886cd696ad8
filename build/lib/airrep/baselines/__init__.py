"""Baselines the paper compares AirRep against (gradient-based attribution on the base LLM)."""
