"""ControlNet guidance in the one sampling loop (issue 17; the engine part first: units applied per step)."""
