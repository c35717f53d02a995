"""infusion: generative Markov-chain transition operators (Infusion Training and baselines)."""
