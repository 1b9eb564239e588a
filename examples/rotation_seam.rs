//! What the rotation seam costs a message: `policy::plan` and then `ActiveKeys::apply` (the
//! rotated signature's template swapped for the one with the active selector), against
//! `policy::plan` alone, for 1 and 10,000 rotated domains. Run by `bench/rotation.sh`.
//!
//!   cargo run --release --ignore-rust-version --example rotation_seam

use signet_milter::config::{Config, SignatureLabel};
use signet_milter::policy;
use signet_milter::rotation::{ActiveKeys, Selected};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const ROUNDS: usize = 7;
const PER_ROUND: u32 = 200_000;

fn config(domains: usize, rotated: bool) -> Config {
    let mut text = String::new();
    for i in 0..domains {
        text.push_str(&format!(
            "[domain.\"d{i}.example\"]\nselector = \"s1\"\nfilename = \"/k/{{domain}}/{{selector}}.key\"\n"
        ));
    }
    if rotated {
        let names: Vec<String> = (0..domains).map(|i| format!("\"d{i}.example\"")).collect();
        text.push_str(&format!("[rotation]\ndomains = [{}]\n", names.join(", ")));
    }
    Config::parse(&text, Path::new("bench.toml")).expect("bench config")
}

/// Median nanoseconds per message over ROUNDS rounds.
fn measure(mut one: impl FnMut() -> usize) -> f64 {
    let mut per_round: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut sink = 0;
            for _ in 0..PER_ROUND {
                sink += one();
            }
            black_box(sink);
            start.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
        })
        .collect();
    per_round.sort_by(f64::total_cmp);
    per_round[ROUNDS / 2]
}

fn main() {
    println!("| rotated domains | plan only (ns/msg) | plan + rotation seam (ns/msg) |");
    println!("|---:|---:|---:|");
    for domains in [1usize, 10_000] {
        let plain = config(domains, false);
        let rotated = config(domains, true);
        let author = format!("d{}.example", domains / 2);
        let keys = ActiveKeys::new(Arc::new(Selected::default()));
        let selections: BTreeMap<SignatureLabel, String> = (0..domains)
            .map(|i| {
                (
                    SignatureLabel::Domain(format!("d{i}.example").into()),
                    "s2".to_string(),
                )
            })
            .collect();
        keys.selected().replace(selections);
        let table = &rotated.signing;
        // The first use builds the rotated templates; steady state is what messages see.
        let warm = keys.apply(table, policy::plan(table, Ok(&author)));
        assert_eq!(warm.signatures[0].selector(), "s2");
        let base = measure(|| policy::plan(&plain.signing, Ok(&author)).signatures.len());
        let seam = measure(|| {
            let plan = keys.apply(table, policy::plan(table, Ok(&author)));
            plan.signatures[0].selector().len()
        });
        println!("| {domains} | {base:.0} | {seam:.0} |");
    }
}
