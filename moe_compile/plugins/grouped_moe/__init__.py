"""The GroupedMoE op's GPU implementation: Triton kernels (kernels.py), their launch wrapper
(launcher.py, launch_plan.py), tuned launch configs (configs.py, configs/) and the tools that
make them (tune.py, aot.py, timing.py). The op itself (attributes, reference, registration)
lives in moe_compile.grouped_moe_op, which compiler/, export/ and this package depend on."""
