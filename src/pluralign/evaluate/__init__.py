"""Evaluation: win rates and length control (`winrate`), judge reliability (`judge_reliability`),
reward–KL frontiers (`frontier`), Pareto fronts and hypervolume (`pareto`), fairness across groups
(`fairness`), RewardBench scoring (`rewardbench`), calibration (`calibration`), steerability, AQI,
honesty and CoSA-Score, and the HTML report (`report.write_report`). Modules are imported on use so
that `import pluralign.evaluate` stays cheap."""
