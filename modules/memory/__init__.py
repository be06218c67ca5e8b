"""Where a model's weights live while it generates: the plan (`planner`, a pure function of free memory, the
model's sizes and the job) and the mechanism that carries it out (`offload`: weights parked in host memory, on the
execution device only while their part or block computes). `manager` ties both to the engine and its flags."""
