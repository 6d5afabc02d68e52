"""Denoising (BART-style) or variational autoencoder pretraining:

    accelerate launch training/pretrain_denoising.py --config denoising_multi30k [...]

It runs `main` of hf_encoders/tasks/denoising/pretrain.py, as `hf-encoders pretrain-denoising` does.
"""

from hf_encoders.tasks.denoising.pretrain import main

if __name__ == "__main__":
    main()
