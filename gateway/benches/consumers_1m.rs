//! One million distinct consumers: memory of the consumer directory and of a
//! per-consumer rate limit, and the cost of identify + limit check.
//! `cargo bench -p gatehouse --bench consumers_1m` (prints a table).

use std::hint::black_box;
use std::time::Instant;

use gatehouse::identity::{generate_key, hash_key, Consumer, ConsumerDirectory};
use gatehouse::limits::{key_hash, GovernorStore, LimitKey, LimitRule, LimitStore, Rate};
use governor::clock::DefaultClock;

const N: usize = 1_000_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    let keys: Vec<String> = (0..N).map(|_| generate_key()).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("consumer-{i:07}")).collect();

    let before = rss_bytes();
    let gold: std::sync::Arc<str> = "gold".into();
    let consumers: Vec<Consumer> = ids
        .iter()
        .map(|id| Consumer::new(id, id, Some(gold.clone()), None))
        .collect();
    let dir = ConsumerDirectory::new(
        consumers,
        keys.iter()
            .enumerate()
            .map(|(i, k)| (hash_key(k), i))
            .collect(),
    );
    let dir_mem = rss_bytes().saturating_sub(before);

    let rule = LimitRule {
        id: "plan:gold:per-second".into(),
        key: LimitKey::Consumer,
        rate: Rate::parse("100/s").unwrap_or(Rate {
            count: 100,
            period: std::time::Duration::from_secs(1),
        }),
        burst: 200,
    };
    let store = GovernorStore::new(&rule, DefaultClock::default());
    let before = rss_bytes();
    for id in &ids {
        black_box(store.check(key_hash(&rule.id, id.as_bytes())));
    }
    let limiter_mem = rss_bytes().saturating_sub(before);

    // Lookup + check in a scattered order, keys already present (steady state).
    let order: Vec<usize> = (0..N).map(|i| (i * 7_919) % N).collect();
    let t = Instant::now();
    for &i in &order {
        let idx = dir.by_key(&keys[i]).unwrap_or(0);
        let c = &dir.consumers[idx];
        black_box(store.check(key_hash(&rule.id, c.id.as_bytes())));
    }
    let both = t.elapsed().as_nanos() as f64 / N as f64;
    let t = Instant::now();
    for &i in &order {
        black_box(store.check(key_hash(&rule.id, ids[i].as_bytes())));
    }
    let check_only = t.elapsed().as_nanos() as f64 / N as f64;
    let t = Instant::now();
    for &i in &order {
        black_box(dir.by_key(&keys[i]));
    }
    let lookup_only = t.elapsed().as_nanos() as f64 / N as f64;

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| consumer directory, {N} consumers with one key each | {:.1} MiB RSS |",
        mib(dir_mem)
    );
    println!(
        "| per-consumer GCRA limit, {N} active keys | {:.1} MiB RSS ({:.0} B/key) |",
        mib(limiter_mem),
        limiter_mem as f64 / N as f64
    );
    println!("| key lookup (SHA-256 + map) | {lookup_only:.0} ns |");
    println!("| limit check (hash + GCRA) | {check_only:.0} ns |");
    println!("| key lookup + limit check | {both:.0} ns |");
}
