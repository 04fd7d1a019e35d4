"""What a user runs on trained models and runs: translate, doctor, explore, estimate, the demos, and the
helpers of the course notebooks (learn)."""
