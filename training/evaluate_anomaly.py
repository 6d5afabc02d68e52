"""AUROC of reconstruction or pseudo-log-likelihood anomaly scores:

    python training/evaluate_anomaly.py --model runs/denoising_imdb/final --output_dir runs/anomaly_imdb

It runs `main` of hf_encoders/tasks/denoising/anomaly.py, as `hf-encoders evaluate-anomaly` does.
"""

from hf_encoders.tasks.denoising.anomaly import main

if __name__ == "__main__":
    main()
