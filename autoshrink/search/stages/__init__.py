"""Search stages, in the order a search runs them: runtime, sensitivity pre-pass, narrowing, warm start,
multi-fidelity screening, refine; and the latency limit they share."""
