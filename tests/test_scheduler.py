"""Block manager and scheduler, on examples worked by hand (block_size 4 throughout)."""
from fastdeploy.engine.block_manager import BlockManager, hash_block
from fastdeploy.engine.request import Request, RequestStatus
from fastdeploy.engine.scheduler import Scheduler


def make_req(rid, tokens, max_tokens=100):
    return Request(request_id=str(rid), prompt=None, prompt_token_ids=list(tokens), sampling_params=None,
                   max_tokens=max_tokens)


def run_step(sched, next_token=7):
    """One step as the engine does it: schedule, 'compute', append a token to requests that sample."""
    out = sched.schedule()
    sampling = [s.request for s in out.scheduled if s.samples]
    sched.update_after_step(out.scheduled)
    for r in sampling:
        r.output_token_ids.append(next_token)
    return out


def plan(out):
    return [(s.request.request_id, s.num_new_tokens) for s in out.scheduled]


# ---- block manager ------------------------------------------------------------------------------
def test_allocate_and_free():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    r = make_req(0, range(6))
    assert bm.allocate(r, 6)
    assert r.block_table == [0, 1] and bm.num_free_blocks == 8
    r.num_computed_tokens = 6
    assert bm.allocate(r, 2)            # 8 tokens still fit in 2 blocks
    assert r.block_table == [0, 1]
    r.num_computed_tokens = 8
    assert bm.allocate(r, 1)            # the 9th token opens block 2
    assert r.block_table == [0, 1, 2] and bm.num_free_blocks == 7
    bm.free(r)
    assert r.block_table == [] and bm.num_free_blocks == 10 and r.num_computed_tokens == 0


def test_out_of_blocks_changes_nothing():
    bm = BlockManager(num_blocks=3, block_size=4, enable_prefix_caching=False)
    r = make_req(0, range(13))          # needs 4 blocks
    assert not bm.allocate(r, 13)
    assert r.block_table == [] and bm.num_free_blocks == 3


def test_hash_chain_depends_on_parent_and_tokens():
    a = hash_block(None, [1, 2, 3, 4])
    assert a == hash_block(None, [1, 2, 3, 4])
    assert a != hash_block(None, [1, 2, 3, 5])
    # same tokens in the second block, different first block: different keys
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(hash_block(None, [0, 2, 3, 4]), [5, 6, 7, 8])
    assert hash_block(None, [1, 2, 3, 4], extra_keys=("img",)) != a


def _computed(bm, r, n):
    assert bm.allocate(r, n)
    r.num_computed_tokens += n
    bm.cache_full_blocks(r)


def test_prefix_hit_partial_hit_and_refcounts():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_req("a", range(10))        # blocks: [0..3] [4..7] [8, 9]
    _computed(bm, a, 10)
    assert len(a.block_hashes) == 2     # only full blocks are cached
    b = make_req("b", list(range(8)) + [50, 51, 52])
    hits = bm.find_cached_prefix(b)
    assert hits == a.block_table[:2]
    assert bm.allocate(b, 3, hits)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert bm.ref_counts[a.block_table[0]] == 2
    # partial hit: first block equal, second differs
    c = make_req("c", [0, 1, 2, 3, 9, 9, 9, 9, 9])
    assert bm.find_cached_prefix(c) == a.block_table[:1]
    bm.free(a)
    assert bm.ref_counts[b.block_table[0]] == 1
    assert bm.num_free_blocks == 10 - 3       # b holds 2 shared + 1 own block


def test_wholly_cached_prompt_still_computes_last_token():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = make_req("a", range(8))
    _computed(bm, a, 8)
    b = make_req("b", range(8))
    assert bm.find_cached_prefix(b) == a.block_table[:1]   # (8 - 1) // 4 = 1 block, not 2


def test_freed_blocks_stay_findable_and_evict_lru():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_req("a", range(8))
    _computed(bm, a, 8)
    b = make_req("b", range(100, 108))
    _computed(bm, b, 8)
    blocks_a, blocks_b = list(a.block_table), list(b.block_table)
    bm.free(a)
    bm.free(b)
    # a's blocks were freed first; within a request the tail block is queued before the head
    assert list(bm.free_queue) == [blocks_a[1], blocks_a[0], blocks_b[1], blocks_b[0]]
    again = make_req("a2", list(range(8)) + [1])
    assert bm.find_cached_prefix(again) == blocks_a          # still findable after free
    # a new 4-token request takes the least recently freed block (a's tail), evicting its key
    d = make_req("d", [200, 201, 202])
    assert bm.allocate(d, 3)
    assert d.block_table == [blocks_a[1]]
    assert bm.find_cached_prefix(again) == blocks_a[:1]
    # reviving a cached free block takes it out of the free queue
    assert bm.allocate(again, 5, bm.find_cached_prefix(again))
    assert blocks_a[0] not in bm.free_queue and bm.ref_counts[blocks_a[0]] == 1


# ---- scheduler ----------------------------------------------------------------------------------
def test_admission_respects_max_num_seqs():
    s = Scheduler(BlockManager(100, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        s.add(make_req(i, range(10 * i, 10 * i + 5)))
    assert plan(run_step(s)) == [("0", 5), ("1", 5)]
    assert plan(run_step(s)) == [("0", 1), ("1", 1)]       # decodes; the third still waits
    s.finish(s.running[0])
    assert plan(run_step(s)) == [("1", 1), ("2", 5)]       # joins the running batch between steps


def test_token_budget_and_chunked_prefill():
    s = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=10)
    s.add(make_req("a", range(6)))
    s.add(make_req("b", range(20, 26)))
    out = run_step(s)
    assert plan(out) == [("a", 6), ("b", 4)]
    assert [x.samples for x in out.scheduled] == [True, False]     # b's chunk yields no token yet
    out = run_step(s)
    assert plan(out) == [("a", 1), ("b", 2)]                         # decode first, then the rest
    assert [x.samples for x in out.scheduled] == [True, True]
    s.add(make_req("c", range(30, 60)))                              # 30 tokens: chunks of <= budget
    assert plan(run_step(s)) == [("a", 1), ("b", 1), ("c", 8)]
    assert plan(run_step(s)) == [("a", 1), ("b", 1), ("c", 8)]


def test_without_chunked_prefill_a_prompt_waits_for_budget():
    s = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=10, enable_chunked_prefill=False)
    s.add(make_req("a", range(6)))
    s.add(make_req("b", range(20, 26)))
    assert plan(run_step(s)) == [("a", 6)]
    assert plan(run_step(s)) == [("a", 1), ("b", 6)]


def test_preemption_of_newest_and_recompute():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    s = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = make_req("a", range(8)), make_req("b", range(10, 18))
    s.add(a)
    s.add(b)
    assert plan(run_step(s)) == [("a", 8), ("b", 8)]       # all 4 blocks used, each has 9 tokens now
    out = run_step(s)
    # a's 9th token needs a 5th block: b (newest) is preempted and requeued at the front
    assert plan(out) == [("a", 1)] and out.preempted == [b]
    assert b.status == RequestStatus.WAITING and b.num_computed_tokens == 0 and b.block_table == []
    assert s.waiting[0] is b and b.output_token_ids == [7]  # its output survives for the recompute
    s.finish(a)
    out = run_step(s)
    assert plan(out) == [("b", 9)]                         # prompt + its 1 output token recomputed
    assert b.num_computed_tokens == 9


def test_preempting_itself_when_it_is_the_only_one_left():
    bm = BlockManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    s = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a = make_req("a", range(8))
    s.add(a)
    run_step(s)
    out = run_step(s)
    assert out.preempted == [a] and out.scheduled == []


def test_prefix_cache_hits_at_admission():
    s = Scheduler(BlockManager(100, 4), max_num_seqs=8, max_num_batched_tokens=100)
    a = make_req("a", range(10))
    s.add(a)
    run_step(s)
    b = make_req("b", list(range(8)) + [99])
    s.add(b)
    out = run_step(s)
    assert plan(out) == [("a", 1), ("b", 1)]               # 8 of b's 9 tokens came from the cache
    assert b.num_cached_tokens == 8


def test_kv_cache_ratio_limits_admission_while_others_run():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    s = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100, prefill_block_limit=5)
    s.add(make_req("a", range(12)))     # 3 blocks
    s.add(make_req("b", range(12)))     # 3 more would pass the limit of 5 while a runs
    assert plan(run_step(s)) == [("a", 12)]


# ---- the model runner's persistent block tables ---------------------------------------------------
def test_persistent_block_tables_write_only_what_changed():
    from fastdeploy.worker.model_runner import PersistentBlockTables
    mirror = PersistentBlockTables(max_blocks=4, rows=2)
    a, b, c = make_req("a", range(3)), make_req("b", range(3)), make_req("c", range(3))
    a.block_table, b.block_table = [5], [7, 8]
    assert mirror.rows_for([a, b]).tolist() == [0, 1]
    assert mirror.table[:2].tolist() == [[5, 0, 0, 0], [7, 8, 0, 0]]
    a.block_table.append(6)                      # a decode step opened a block: only it is written
    mirror.table[0, 0] = 99                      # (poisoned: proves the old entry is not rewritten)
    assert mirror.rows_for([b, a]).tolist() == [1, 0]
    assert mirror.table[0].tolist() == [99, 6, 0, 0]
    a.block_table = [3]                          # preempted and readmitted: a new list, mirrored afresh
    mirror.rows_for([a])
    assert mirror.table[0, 0] == 3
    c.block_table = [1, 2, 3]                    # a third request grows the mirror
    assert mirror.rows_for([c]).tolist() == [2] and mirror.table.shape == (4, 4)
    mirror.release(b)
    d = make_req("d", range(3))
    d.block_table = [4]
    assert mirror.rows_for([d]).tolist() == [1]  # b's row is reused


# ---- async scheduling: tokens still on the device ----------------------------------------------
def test_inflight_token_is_scheduled_before_it_is_known():
    """Step 1 prefills 3 tokens and samples; before that token reaches the host, step 2 schedules it
    (1 new token, sampling again). Its block is keyed only once the token is known."""
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=16)
    r = make_req(0, [1, 2, 3], max_tokens=3)
    sched.add(r)
    out1 = sched.schedule()
    assert plan(out1) == [("0", 3)] and out1.scheduled[0].samples
    sched.update_after_step(out1.scheduled)
    r.num_inflight = 1                          # token 4 is on the device
    out2 = sched.schedule()
    assert plan(out2) == [("0", 1)] and out2.scheduled[0].samples
    sched.update_after_step(out2.scheduled)
    assert r.num_computed_tokens == 4 and r.block_hashes == []     # block 0 ends with the unknown token
    r.num_inflight = 2                          # step 2 queued too
    r.output_token_ids.append(9)                # step 1's token arrives
    r.num_inflight = 1
    bm.cache_full_blocks(r)
    assert r.block_hashes == [hash_block(None, [1, 2, 3, 9])]


def test_request_whose_last_token_is_inflight_is_not_scheduled():
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=16)
    done, more = make_req(0, [1, 2], max_tokens=2), make_req(1, [1, 2], max_tokens=3)
    for r in (done, more):
        sched.add(r)
    sched.update_after_step(sched.schedule().scheduled)       # step 1: prefill; first tokens on the device
    for r in (done, more):
        r.num_inflight = 1
    out2 = sched.schedule()                                    # step 2 feeds them back
    assert plan(out2) == [("0", 1), ("1", 1)]
    sched.update_after_step(out2.scheduled)
    for r in (done, more):
        r.output_token_ids.append(5)                           # step 1's tokens arrive; step 2's are out
    # `done`: 1 known + 1 on the device = its max_tokens 2, nothing left to schedule; `more` goes on
    assert plan(sched.schedule()) == [("1", 1)]
