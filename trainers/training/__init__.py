"""LoRA training with peft + trl: one typed config, three schedules (il, iwm, sr)."""
