"""Search spaces: sizes, costs, validation, operators that keep couplings valid, repair."""

import itertools

import numpy as np
import pytest

from recbole_fofa.search import (
    SPACES,
    BlockSpace,
    CompoundSpace,
    ElasticSpace,
    InfeasibleBudget,
    build_space,
)
from recbole_fofa.subnet import SubnetConfig, SupernetShape

SHAPE = SupernetShape(seq_len=8, hidden_size=16, inner_size=32, n_heads=2, n_blocks=4)


def spaces(shape=SHAPE):
    return [
        BlockSpace(shape),
        ElasticSpace(shape, (0.25, 0.5, 0.75, 1.0), (1, 2)),
        CompoundSpace(shape, (0.25, 0.5, 0.75, 1.0), (1, 1, 2, 2)),
    ]


@pytest.mark.parametrize("space", spaces(), ids=lambda s: s.name)
def test_size_and_enumerate(space):
    configs = space.enumerate(limit=10_000)
    expected = {"block": 2**4 - 1, "elastic": 9**4 - 1, "compound": 2**4 - 1}[space.name]
    assert space.size() == expected == len(configs) == len({c.key for c in configs})
    for config in configs:
        assert space.validate(config) is config
        assert SubnetConfig(config.widths, config.heads) == config  # canonical values


def test_enumerate_refuses_above_the_limit():
    space = ElasticSpace(SHAPE)  # 6560 configs, default limit 1024
    with pytest.raises(ValueError, match="search_exhaustive_limit = 1,024"):
        space.enumerate()
    assert len(space.enumerate(limit=6560)) == 6560


@pytest.mark.parametrize("space", spaces(), ids=lambda s: s.name)
def test_costs_equal_the_cost_model_and_extremes(space):
    configs = space.enumerate(limit=10_000)
    breakdown = SHAPE.cost(configs)
    np.testing.assert_array_equal(space.cost(configs), breakdown.encoder_macs)
    np.testing.assert_array_equal(space.params(configs), breakdown.encoder_params)
    macs = breakdown.encoder_macs
    assert space.min_cost() == macs.min() == space.cost(space.smallest())[0]
    assert space.max_cost() == macs.max() == space.cost(space.largest())[0]
    assert space.largest() == SHAPE.full()  # every space here reaches the full network


@pytest.mark.parametrize("name", ["block", "elastic", "compound"])
def test_operators_never_produce_an_invalid_config(name):
    """Property test: sample, mutate, crossover, neighbours, grow and repair stay in the space
    (for compound: every kept block at the width and heads its number of kept blocks gives)."""
    space = {s.name: s for s in spaces()}[name]
    macs = space.cost(space.enumerate(limit=10_000))
    for seed in range(150):
        rng = np.random.default_rng(seed)
        a, b = space.sample(rng), space.sample(rng)
        made = [a, b, space.crossover(a, b, rng)]
        for prob in (0.1, 0.5, 1.0):
            made.append(space.mutate(a, prob, rng))
        made += space.neighbours(a) + space.neighbours(a, larger=True)
        budget = float(rng.uniform(macs.min(), macs.max()))
        made += [space.repair(a, budget), space.grow(b, budget)]
        for config in made:
            space.validate(config)
            assert config.n_kept >= 1
            if name == "compound":
                k = config.n_kept
                kept = {(w, h) for w, h in zip(config.widths, config.heads) if w}
                assert kept == {(space.width_by_kept[k - 1], space.compound_heads[k - 1])}
        assert space.cost(made[-2])[0] <= budget


def test_compound_mutation_rederives_widths():
    space = CompoundSpace(SHAPE, (0.25, 0.5, 0.75, 1.0), (1, 1, 2, 2))
    two = space._decode(np.array([[1, 1, 0, 0]]))[0]
    assert two.widths == (16, 16, 0, 0) and two.heads == (1, 1, 0, 0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        child = space.mutate(two, 1.0, rng)
        seen.add(child.n_kept)
        assert set(child.widths) - {0} == {space.width_by_kept[child.n_kept - 1]}
    assert seen == {1, 2, 3, 4}


def test_mutate_with_zero_probability_and_self_crossover_keep_the_config():
    space = ElasticSpace(SHAPE)
    rng = np.random.default_rng(3)
    config = space.sample(rng)
    assert space.mutate(config, 0.0, rng) == config
    assert space.crossover(config, config, rng) == config


def test_validate_names_the_bad_choice():
    elastic = ElasticSpace(SHAPE, (0.5, 1.0), (2,))
    with pytest.raises(ValueError, match=r"width 8 is not one of the width_choices \[0.5, 1.0\]"):
        elastic.validate(SubnetConfig((8, 0, 0, 0), (2, 0, 0, 0)))
    with pytest.raises(ValueError, match=r"1 heads is not one of the head_choices \[2\]"):
        elastic.validate(SubnetConfig((16, 0, 0, 0), (1, 0, 0, 0)))
    with pytest.raises(ValueError, match="has 3 blocks, the supernet 4"):
        elastic.validate(SubnetConfig((16, 0, 0), (2, 0, 0)))
    with pytest.raises(ValueError, match="at least one block"):
        elastic.validate(SubnetConfig((0,) * 4, (0,) * 4))
    with pytest.raises(ValueError, match="block space keeps a block at full width 32"):
        BlockSpace(SHAPE).validate(SubnetConfig((16, 32, 0, 0), (2, 2, 0, 0)))
    compound = CompoundSpace(SHAPE, (0.25, 0.5, 0.75, 1.0), (1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"compound_widths\[1\] = 0.5"):
        compound.validate(SubnetConfig((32, 32, 0, 0), (1, 1, 0, 0)))


def test_repair_fits_never_edits_its_input_and_is_deterministic():
    space = ElasticSpace(SHAPE)
    full = SHAPE.full()
    budget = 0.4 * space.max_cost()
    repaired = space.repair(full, budget)
    assert full == SHAPE.full()  # frozen input, unchanged
    assert space.cost(repaired)[0] <= budget and repaired != full
    assert space.repair(full, budget) == repaired
    # already fitting: an equal config comes back
    assert space.repair(repaired, budget) == repaired
    # a greedy repair never undershoots by more than one step: a larger neighbour would not fit
    grown = [n for n in space.neighbours(repaired, larger=True) if space.cost(n)[0] <= budget]
    assert space.cost(repaired)[0] > 0.5 * budget or not grown


def test_repair_with_quality_drops_the_least_useful_block():
    space = BlockSpace(SHAPE)
    useful = np.array([4.0, 1.0, 3.0, 2.0])  # planted per-block usefulness

    def quality(configs):
        return [float(useful[list(c.mask)].sum()) for c in configs]

    one_block = space.cost(SHAPE.from_mask([1, 0, 0, 0]))[0]
    repaired = space.repair(SHAPE.full(), 2 * one_block, quality_fn=quality)
    assert repaired.mask == (True, False, True, False)  # blocks 1 and 3 (least useful) dropped
    repaired = space.repair(SHAPE.full(), 3 * one_block, quality_fn=quality)
    assert repaired.mask == (True, False, True, True)


def test_repair_below_the_cheapest_raises_naming_the_minimum():
    space = ElasticSpace(SHAPE)
    low = space.min_cost()
    with pytest.raises(InfeasibleBudget) as info:
        space.repair(SHAPE.full(), low - 1)
    text = str(info.value)
    assert f"{low:,} MACs" in text and f"{low / SHAPE.full_macs():.4f} of the full encoder" in text
    assert info.value.min_macs == low


def test_grow_uses_the_room_and_stays_within_it():
    space = ElasticSpace(SHAPE)
    small = space.smallest()
    budget = 0.7 * space.max_cost()
    grown = space.grow(small, budget)
    assert space.cost(grown)[0] <= budget
    assert all(space.cost(n)[0] > budget for n in space.neighbours(grown, larger=True))
    assert space.grow(SHAPE.full(), space.max_cost()) == SHAPE.full()


def test_encode_fixed_length_dropped_blocks_zero():
    space = ElasticSpace(SHAPE)  # 4 widths + 2 head counts per block
    configs = [space.smallest(), SHAPE.full(), SubnetConfig((8, 0, 32, 16), (1, 0, 2, 2))]
    features = space.encode(configs)
    assert features.shape == (3, 4 * 6)
    per_block = features.reshape(3, 4, 6)
    assert per_block[2, 1].sum() == 0 and per_block[0, 1:].sum() == 0
    np.testing.assert_array_equal(per_block[2, 0], [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(per_block[1].sum(axis=1), [2, 2, 2, 2])


def test_build_space_reads_the_config_keys():
    assert set(SPACES) == {"block", "elastic", "compound"}
    assert isinstance(build_space({}, SHAPE), BlockSpace)
    elastic = build_space({"search_space": "elastic", "width_choices": [0.5, 1.0],
                           "head_choices": [2]}, SHAPE)
    assert elastic.width_values == (16, 32) and elastic.head_values == (2,)
    assert elastic.size() == 3**4 - 1
    compound = build_space({"search_space": "compound", "compound_widths": [0.25, 0.5, 0.5, 1],
                            "compound_heads": [1, 2, 2, 2]}, SHAPE)
    assert compound.width_by_kept == (8, 16, 16, 32)


@pytest.mark.parametrize("config, message", [
    ({"search_space": "deep"}, r"`search_space` = 'deep' is invalid: expected one of"),
    ({"search_space": "elastic", "width_choices": [0.5, 1.5]}, "`width_choices`"),
    ({"search_space": "elastic", "width_choices": []}, "`width_choices`"),
    ({"search_space": "elastic", "width_choices": [0.5, 0.51]}, "must be distinct"),
    ({"search_space": "elastic", "head_choices": [1, 3]}, r"`head_choices`.*n_heads = 2"),
    ({"search_space": "compound", "compound_widths": [0.5, 1.0]}, "`compound_widths`"),
    ({"search_space": "compound", "compound_widths": [0.25, 0.3, 0.5, 1.0],
      "compound_heads": [1, 1, 2, 2]}, r"\[0.3\] not in `width_choices`"),
    ({"search_space": "compound", "compound_widths": [0.25, 0.5, 0.5, 1.0],
      "compound_heads": [1, 1, 2, 3]}, "`compound_heads`"),
])
def test_build_space_bad_values_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        build_space(config, SHAPE)


def test_block_space_matches_from_mask():
    space = BlockSpace(SHAPE)
    masks = [m for m in itertools.product([0, 1], repeat=4) if any(m)]
    assert {SHAPE.from_mask(m) for m in masks} == set(space.enumerate())


def test_cheapest_sub_network_in_macs():
    """4*L*d^2 + 2*L^2*d + 2*L*d*d_ff at full width (L=8, d=16, d_ff=32); one head of 8 units
    and 8 feed-forward units: 3*L*d*a + 2*L^2*a + L*a*d + 2*L*d*f with a = f = 8."""
    assert SHAPE.cheapest_macs() == 4 * 8 * 16**2 + 2 * 8**2 * 16 + 2 * 8 * 16 * 32 == 18432
    one_small = 3 * 8 * 16 * 8 + 2 * 8**2 * 8 + 8 * 8 * 16 + 2 * 8 * 16 * 8
    assert SHAPE.cheapest_macs("elastic", (0.25, 0.5, 1.0), (1, 2)) == one_small == 7168
    # compound: one block at full width costs more than two small ones
    assert SHAPE.cheapest_macs("compound", compound_widths=(1.0, 0.25, 0.5, 1.0),
                               compound_heads=(2, 1, 1, 2)) == 2 * one_small
    for space in spaces():
        assert space.min_cost() == int(space.cost(space.smallest())[0])
    with pytest.raises(ValueError, match="search space 'deep' is invalid"):
        SHAPE.cheapest_macs("deep")
