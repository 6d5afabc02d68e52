"""Masked-LM pretraining of an encoder:

    accelerate launch training/pretrain_mlm.py --config mlm_small [--max_steps 2000 ...]

It runs `main` of hf_encoders/tasks/masked_lm/train.py, as `hf-encoders pretrain` does.
"""

from hf_encoders.tasks.masked_lm.train import main

if __name__ == "__main__":
    main()
