"""prime-megatron: PRIME (Process Reinforcement through Implicit Rewards) on megatron-core."""
