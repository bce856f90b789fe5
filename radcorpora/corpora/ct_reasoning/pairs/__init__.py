"""ct-reasoning-dpo: DPO preference pairs from a ct-reasoning build (spec.py)."""
