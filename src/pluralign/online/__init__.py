"""Online alignment: generate from the policy being trained → score → learn, on the one training loop.

    rollout (decode.sampler) → rewards (gold | RM | PAL user | judge | Python fn; weighted, normalised)
    → advantages (registered: grpo, dr_grpo, rloo, reinforce_pp, gae) → policy loss (registered: clip,
    gspo; KL k1/k2/k3 in the reward or the loss) → train.loop step

Parts: `advantages`, `policy_losses` (pure functions, specs/online.md), `rewards`, `rollout`, `methods`
(policy gradient, online DPO pairs, rejection-sampling fine-tuning), `engine` (the rollout phase that
feeds the loop). Recipes: `pluralign.train.recipes.online`, `pluralign train grpo|gspo|rloo|reinforce_pp|
ppo|online_dpo|rsft`.
"""
