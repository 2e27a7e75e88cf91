//! `steward bench memory`: agents' memory on LoCoMo-shaped data, made up here — long dialogues
//! between two speakers over dated sessions, in which each speaker mentions facts about their
//! life (a job, a home, a pet, a hobby, a sibling) among small talk, and some facts change
//! (a new job, a move). Each dialogue turn is written as a memory on the fast path (no model
//! call) in its conversation's scope; questions about the facts carry the ids of the turns
//! that answer them (the newest mention, for a fact that changed). Reports evidence recall at
//! 5 and 10 per retrieval method, search latency at 10k and 100k memories, the fast path's
//! write latency, and the tokens a query returns against the whole conversation's.
//!
//! Then the same turns again, all in one scope: the size at which a scope is searched through
//! its graph (approximate nearest neighbours) rather than by comparing every embedding. Vector
//! and hybrid search there are timed both ways over one store, and the graph's top 10 is
//! compared with the exact top 10.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use steward_memory::{Limits, Memory, Method, NewMemory, Query};
use steward_types::clock::SystemClock;
use steward_types::config::StoreConfig;

/// An embedder that remembers what it made, so the one-scope copy of the turns, and the
/// questions asked of it, are not embedded again: that phase times searching, not the model.
struct Remembering {
    inner: Arc<dyn steward_memory::Embedder>,
    made: Mutex<HashMap<String, Vec<f32>>>,
    /// Off while the first pass is timed (every text embedded by the model, queries too);
    /// on for the one-scope phase.
    recall: std::sync::atomic::AtomicBool,
}

impl steward_memory::Embedder for Remembering {
    fn model(&self) -> &str {
        self.inner.model()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        if !self.recall.load(std::sync::atomic::Ordering::Relaxed) {
            let made = self.inner.embed(texts)?;
            let mut kept = self.made.lock().unwrap_or_else(|p| p.into_inner());
            for (t, v) in texts.iter().zip(&made) {
                kept.insert(t.to_string(), v.clone());
            }
            return Ok(made);
        }
        let missing: Vec<&str> = {
            let made = self.made.lock().unwrap_or_else(|p| p.into_inner());
            texts
                .iter()
                .copied()
                .filter(|t| !made.contains_key(*t))
                .collect()
        };
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            self.inner.embed(&missing)?
        };
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        for (t, v) in missing.into_iter().zip(fresh) {
            made.insert(t.to_string(), v);
        }
        texts
            .iter()
            .map(|t| {
                made.get(*t)
                    .cloned()
                    .ok_or_else(|| format!("no embedding for {t:?}"))
            })
            .collect()
    }
}

/// A small deterministic generator (splitmix64): the same data every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NAMES: &[&str] = &[
    "Caroline", "Melanie", "Jon", "Gina", "Tim", "John", "Maria", "Deborah", "Evan", "Sam",
    "Calvin", "Dave", "Joanna", "Nate", "Audrey", "Andrew", "James", "Jolene", "Priya", "Tomas",
];
const JOBS: &[&str] = &[
    "nurse",
    "carpenter",
    "data analyst",
    "barista",
    "teacher",
    "pilot",
    "chef",
    "architect",
    "paramedic",
    "librarian",
    "electrician",
    "lawyer",
    "photographer",
    "pharmacist",
];
const COMPANIES: &[&str] = &[
    "Northwind",
    "a small bakery",
    "the city hospital",
    "a startup downtown",
    "the airport",
    "a law firm",
    "the public library",
    "a design studio",
];
const CITIES: &[&str] = &[
    "Lisbon",
    "Denver",
    "Osaka",
    "Toronto",
    "Nairobi",
    "Krakow",
    "Austin",
    "Melbourne",
    "Glasgow",
    "Valencia",
    "Portland",
    "Montreal",
];
const PETS: &[&str] = &["dog", "cat", "parrot", "rabbit", "tortoise", "hamster"];
const PET_NAMES: &[&str] = &[
    "Max", "Luna", "Biscuit", "Pepper", "Olive", "Ziggy", "Mochi", "Rocket", "Hazel", "Noodle",
];
const HOBBIES: &[&str] = &[
    "pottery",
    "rock climbing",
    "salsa dancing",
    "birdwatching",
    "woodworking",
    "chess",
    "sourdough baking",
    "trail running",
    "watercolour painting",
    "kayaking",
];
const SUBJECTS: &[&str] = &[
    "marine biology",
    "architecture",
    "medicine",
    "economics",
    "music composition",
    "law",
];
const SMALL_TALK: &[&str] = &[
    "That sounds like a lot of fun, tell me more about it!",
    "Haha, I know exactly what you mean.",
    "The weather has been so strange this week.",
    "I watched a great documentary last night, you would have liked it.",
    "Did you end up going to that concert?",
    "I have been so busy lately, barely had time to breathe.",
    "We should grab coffee sometime soon.",
    "My weekend was pretty quiet, mostly cleaned the house.",
    "I tried a new recipe yesterday and it actually worked out.",
    "Work has been intense but I am managing.",
    "That is wonderful news, congratulations!",
    "I am reading a novel about a lighthouse keeper right now.",
    "The traffic this morning was unbelievable.",
    "Thanks for checking in, it means a lot.",
    "I finally fixed the leaking tap in the kitchen.",
    "We had a picnic in the park, the kids loved it.",
];

/// One turn: its id (`c{conv}:D{session}:{turn}`), its text and when it was said.
struct Turn {
    id: String,
    text: String,
    at: i64,
}

/// A question and the turns that answer it.
struct Question {
    conv: usize,
    text: String,
    evidence: Vec<String>,
}

const SESSIONS: usize = 20;
const TURNS_PER_SESSION: usize = 25;
const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_672_531_200_000; // 2023-01-01

/// A turn's place: (session, turn), from 0.
type Slot = (usize, usize);

/// A (session, turn) in `sessions` that no fact has taken yet.
fn free_slot(
    rng: &mut Rng,
    planned: &[(usize, usize, usize, String)],
    sessions: std::ops::Range<usize>,
) -> Slot {
    loop {
        let at = (
            sessions.start + rng.below(sessions.len()),
            rng.below(TURNS_PER_SESSION),
        );
        if !planned.iter().any(|p| (p.0, p.1) == at) {
            return at;
        }
    }
}

/// Conversation `c`: its turns, and questions whose evidence is among them.
fn conversation(c: usize) -> (Vec<Turn>, Vec<Question>) {
    let mut rng = Rng(0x5eed_0000 + c as u64);
    let speakers = [rng.pick(NAMES), rng.pick(NAMES)];
    let speakers = if speakers[0] == speakers[1] {
        [speakers[0], NAMES[(c + 7) % NAMES.len()]]
    } else {
        speakers
    };
    // Where each fact is said: (session, turn) → (speaker, text), with its question.
    let mut planned: Vec<(usize, usize, usize, String)> = Vec::new();
    // A question's text and the (session, turn) places of its evidence.
    let mut questions: Vec<(String, Vec<Slot>)> = Vec::new();
    for (s, name) in speakers.iter().enumerate() {
        // A job, changed halfway through.
        let first = free_slot(&mut rng, &planned, 0..6);
        let (job1, job2) = (rng.pick(JOBS), rng.pick(JOBS));
        planned.push((
            first.0,
            first.1,
            s,
            format!(
                "I just started working as a {job1} at {}.",
                rng.pick(COMPANIES)
            ),
        ));
        let second = free_slot(&mut rng, &planned, 10..16);
        planned.push((
            second.0,
            second.1,
            s,
            format!(
                "Big news: I quit and I am now a {job2} at {}!",
                rng.pick(COMPANIES)
            ),
        ));
        questions.push((format!("What does {name} do for work now?"), vec![second]));
        // A home, moved once.
        let home = free_slot(&mut rng, &planned, 0..8);
        let (city1, city2) = (rng.pick(CITIES), rng.pick(CITIES));
        planned.push((
            home.0,
            home.1,
            s,
            format!("Our flat in {city1} is tiny but I love the neighbourhood."),
        ));
        let moved = free_slot(&mut rng, &planned, 12..18);
        planned.push((
            moved.0,
            moved.1,
            s,
            format!("We finally moved to {city2}, the new place has a garden."),
        ));
        questions.push((format!("Which city does {name} live in?"), vec![moved]));
        // A pet, named.
        let pet = free_slot(&mut rng, &planned, 0..SESSIONS);
        let (kind, pet_name) = (rng.pick(PETS), rng.pick(PET_NAMES));
        planned.push((
            pet.0,
            pet.1,
            s,
            format!("I adopted a {kind} from the shelter and named it {pet_name}."),
        ));
        questions.push((format!("What is the name of {name}'s {kind}?"), vec![pet]));
        // A hobby.
        let hobby = free_slot(&mut rng, &planned, 0..SESSIONS);
        planned.push((
            hobby.0,
            hobby.1,
            s,
            format!(
                "Lately I have been really into {} on weekends.",
                rng.pick(HOBBIES)
            ),
        ));
        questions.push((
            format!("What hobby does {name} do on weekends?"),
            vec![hobby],
        ));
        // A sibling, mentioned twice: both turns are evidence.
        let sis = free_slot(&mut rng, &planned, 0..10);
        let study = rng.pick(SUBJECTS);
        planned.push((
            sis.0,
            sis.1,
            s,
            format!("My sister is studying {study} at university."),
        ));
        let sis2 = free_slot(&mut rng, &planned, 10..SESSIONS);
        planned.push((
            sis2.0,
            sis2.1,
            s,
            format!("My sister passed her exams, {study} is hard but she loves it."),
        ));
        questions.push((format!("What does {name}'s sister study?"), vec![sis, sis2]));
    }
    let mut turns = Vec::with_capacity(SESSIONS * TURNS_PER_SESSION);
    for session in 0..SESSIONS {
        let day = START_MS + (session as i64) * 7 * DAY_MS;
        for turn in 0..TURNS_PER_SESSION {
            let (speaker, line) = match planned.iter().find(|p| (p.0, p.1) == (session, turn)) {
                Some(p) => (p.2, p.3.clone()),
                None => (turn % 2, rng.pick(SMALL_TALK).to_string()),
            };
            turns.push(Turn {
                id: format!("c{c}:D{}:{}", session + 1, turn + 1),
                text: format!("{}: {line}", speakers[speaker]),
                at: day + (turn as i64) * 60_000,
            });
        }
    }
    let id = |(s, t): Slot| format!("c{c}:D{}:{}", s + 1, t + 1);
    let questions = questions
        .into_iter()
        .map(|(text, ev)| Question {
            conv: c,
            text,
            evidence: ev.into_iter().map(id).collect(),
        })
        .collect();
    (turns, questions)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn query(q: &Question, method: Method, limit: usize) -> Query {
    Query {
        text: q.text.clone(),
        scopes: vec![format!("user:conv{}", q.conv)],
        limit,
        method,
        ..Query::default()
    }
}

/// The same question asked of the one scope that holds every conversation.
fn query_all(q: &Question, method: Method, limit: usize) -> Query {
    Query {
        scopes: vec![ONE_SCOPE.into()],
        ..query(q, method, limit)
    }
}

const ONE_SCOPE: &str = "collection:everyone";

/// The turn ids of a search's results.
async fn turn_ids(memory: &Memory, q: &Query) -> anyhow::Result<Vec<String>> {
    Ok(memory
        .search(q)
        .await?
        .hits
        .iter()
        .map(|h| {
            serde_json::from_str::<serde_json::Value>(&h.record.metadata)
                .ok()
                .and_then(|m| m["turn"].as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect())
}

/// Mean share of each question's evidence found in the top `k`.
async fn recall(
    memory: &Memory,
    questions: &[Question],
    method: Method,
    k: usize,
) -> anyhow::Result<f64> {
    recall_by(memory, questions, &|q| query(q, method, k)).await
}

async fn recall_by(
    memory: &Memory,
    questions: &[Question],
    ask: &dyn Fn(&Question) -> Query,
) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for q in questions {
        let found = turn_ids(memory, &ask(q)).await?;
        let hit = q.evidence.iter().filter(|e| found.contains(e)).count();
        sum += hit as f64 / q.evidence.len() as f64;
    }
    Ok(sum / questions.len() as f64)
}

/// Search latency (ms) over every question, hybrid, top 10 (the query's embedding included).
async fn latencies(memory: &Memory, questions: &[Question]) -> anyhow::Result<Vec<f64>> {
    latencies_by(memory, questions, &|q| query(q, Method::Hybrid, 10)).await
}

async fn latencies_by(
    memory: &Memory,
    questions: &[Question],
    ask: &dyn Fn(&Question) -> Query,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(questions.len());
    for q in questions {
        let query = ask(q);
        let t = Instant::now();
        memory.search(&query).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(sorted(out))
}

pub async fn run(total: usize, model_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let per_conv = SESSIONS * TURNS_PER_SESSION;
    let convs_small = 10_000 / per_conv;
    let convs = total.div_ceil(per_conv).max(convs_small);
    let dir = std::env::temp_dir().join(format!(
        "steward-bench-memory-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let store = steward_store::open(&url, &StoreConfig::default()).await?;
    let remembering = match model_dir {
        Some(dir) => Some(Arc::new(Remembering {
            inner: Arc::new(
                steward_memory::embed::MiniLm::load(dir).map_err(|e| anyhow::anyhow!(e))?,
            ),
            made: Mutex::default(),
            recall: false.into(),
        })),
        None => None,
    };
    let embedder: Option<Arc<dyn steward_memory::Embedder>> = match &remembering {
        Some(r) => Some(r.clone()),
        None => {
            eprintln!("memory: no --model-dir, so no embeddings: vector recall is not measured");
            None
        }
    };
    let memory = Memory::open(store, Arc::new(SystemClock), Limits::default(), embedder).await?;
    let mut embed_secs = 0.0;
    eprintln!("memory: {convs} conversations × {per_conv} turns, SQLite (synchronous=FULL)");

    let mut questions = Vec::new();
    let mut writes = Vec::new();
    let mut context_tokens = Vec::new();
    let mut at_10k = None;
    for c in 0..convs {
        let (turns, qs) = conversation(c);
        context_tokens.push(
            turns
                .iter()
                .map(|t| steward_memory::estimate_tokens(&t.text))
                .sum::<usize>() as f64,
        );
        for t in turns {
            let started = Instant::now();
            let p = memory
                .prepare(
                    "admin:admin",
                    NewMemory {
                        scope: format!("user:conv{c}"),
                        text: t.text,
                        metadata: Some(json!({"turn": t.id})),
                        valid_from: Some(t.at),
                        ..NewMemory::default()
                    },
                )
                .await?;
            memory.commit(p, None).await?;
            writes.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        questions.extend(qs);
        if c + 1 == convs_small {
            let t = Instant::now();
            memory.embed_pending().await?;
            embed_secs += t.elapsed().as_secs_f64();
            at_10k = Some(latencies(&memory, &questions).await?);
            eprintln!("memory: 10k written; search measured");
        }
    }
    let t = Instant::now();
    memory.embed_pending().await?;
    embed_secs += t.elapsed().as_secs_f64();
    let at_100k = latencies(&memory, &questions).await?;
    let n = memory.indexed();
    let mut r5 = serde_json::Map::new();
    let mut r10 = serde_json::Map::new();
    for (name, m) in [
        ("bm25", Method::FullText),
        ("vector", Method::Vector),
        ("hybrid", Method::Hybrid),
        ("recency", Method::Recency),
    ] {
        if m == Method::Vector && memory.embedding_model().is_none() {
            r5.insert(name.into(), serde_json::Value::Null);
            r10.insert(name.into(), serde_json::Value::Null);
            continue;
        }
        r5.insert(
            name.into(),
            json!(round(recall(&memory, &questions, m, 5).await?)),
        );
        r10.insert(
            name.into(),
            json!(round(recall(&memory, &questions, m, 10).await?)),
        );
    }
    let mut tokens = 0usize;
    for q in &questions {
        tokens += memory.search(&query(q, Method::Hybrid, 10)).await?.tokens;
    }
    let at_10k = at_10k.unwrap_or_default();
    let writes = sorted(writes);
    let one_scope = match remembering {
        Some(e) => one_scope(&dir, e, convs, &questions).await?,
        None => serde_json::Value::Null,
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        json!({
            "bench": "memory",
            "memories": n,
            "questions": questions.len(),
            "recall_at_5": r5,
            "recall_at_10": r10,
            "search_p50_ms_10k": round(percentile(&at_10k, 0.5)),
            "search_p95_ms_10k": round(percentile(&at_10k, 0.95)),
            "search_p50_ms_100k": round(percentile(&at_100k, 0.5)),
            "search_p95_ms_100k": round(percentile(&at_100k, 0.95)),
            "write_p50_ms": round(percentile(&writes, 0.5)),
            "write_p95_ms": round(percentile(&writes, 0.95)),
            "embedding_model": memory.embedding_model(),
            "embedded_per_s": round(memory.embedded() as f64 / embed_secs.max(1e-9)),
            "tokens_per_query": round(tokens as f64 / questions.len() as f64),
            "full_context_tokens": round(context_tokens.iter().sum::<f64>() / context_tokens.len() as f64),
            "one_scope": one_scope,
        })
    );
    Ok(())
}

/// Every conversation's turns again, in one scope of their own store, embedded from what the
/// first pass made; then the questions asked of that scope, first by comparing every
/// embedding, then through the scope's graph (from a second service over the same store, as a
/// node restarted with graphs on would build it).
async fn one_scope(
    dir: &std::path::Path,
    embedder: Arc<Remembering>,
    convs: usize,
    questions: &[Question],
) -> anyhow::Result<serde_json::Value> {
    embedder
        .recall
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let url = format!("sqlite://{}", dir.join("one-scope.db").display());
    let store = steward_store::open(&url, &StoreConfig::default()).await?;
    let exact_limits = Limits {
        graph_above: usize::MAX,
        ..Limits::default()
    };
    let exact = Memory::open(
        store.clone(),
        Arc::new(SystemClock),
        exact_limits,
        Some(embedder.clone()),
    )
    .await?;
    for c in 0..convs {
        for t in conversation(c).0 {
            let p = exact
                .prepare(
                    "admin:admin",
                    NewMemory {
                        scope: ONE_SCOPE.into(),
                        text: t.text,
                        metadata: Some(json!({"turn": t.id})),
                        valid_from: Some(t.at),
                        ..NewMemory::default()
                    },
                )
                .await?;
            exact.commit(p, None).await?;
        }
    }
    exact.embed_pending().await?;
    // The questions' embeddings, made once: what follows times the search alone.
    let texts: Vec<&str> = questions.iter().map(|q| q.text.as_str()).collect();
    for chunk in texts.chunks(32) {
        steward_memory::Embedder::embed(embedder.as_ref(), chunk)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    eprintln!(
        "memory: {} memories in one scope; searching it exactly",
        exact.indexed()
    );
    let vector = |q: &Question| query_all(q, Method::Vector, 10);
    let hybrid = |q: &Question| query_all(q, Method::Hybrid, 10);
    let exact_vector = latencies_by(&exact, questions, &vector).await?;
    let exact_hybrid = latencies_by(&exact, questions, &hybrid).await?;
    let exact_recall = recall_by(&exact, questions, &vector).await?;
    // Each question's tenth-best similarity: a graph's result is as good as exact when it
    // reaches it (many turns repeat word for word, so ids alone would count ties as misses).
    let mut tenth = Vec::with_capacity(questions.len());
    for q in questions {
        let hits = exact.search(&vector(q)).await?.hits;
        tenth.push(hits.last().and_then(|h| h.vector).unwrap_or(f64::MIN));
    }
    drop(exact);

    let started = Instant::now();
    let graphed = Memory::open(
        store,
        Arc::new(SystemClock),
        Limits::default(),
        Some(embedder),
    )
    .await?;
    let loaded_s = started.elapsed().as_secs_f64();
    if !graphed.graphs_ready(Duration::from_secs(3600)).await {
        anyhow::bail!("the one scope's graph was not built within an hour");
    }
    let built_s = started.elapsed().as_secs_f64() - loaded_s;
    eprintln!("memory: graph built in {built_s:.1} s; searching through it");
    let graph_vector = latencies_by(&graphed, questions, &vector).await?;
    let graph_hybrid = latencies_by(&graphed, questions, &hybrid).await?;
    let graph_recall = recall_by(&graphed, questions, &vector).await?;
    let mut same = 0usize;
    let mut asked = 0usize;
    for (q, bar) in questions.iter().zip(&tenth) {
        let hits = graphed.search(&vector(q)).await?.hits;
        same += hits
            .iter()
            .filter(|h| h.vector.is_some_and(|v| v >= bar - 1e-6))
            .count();
        asked += 10;
    }
    let ms =
        |v: &[f64]| json!({"p50": round(percentile(v, 0.5)), "p95": round(percentile(v, 0.95))});
    Ok(json!({
        "memories": graphed.indexed(),
        "graphs": graphed.graphs().0,
        "index_load_s": round(loaded_s),
        "graph_build_s": round(built_s),
        "exact": {"vector_ms": ms(&exact_vector), "hybrid_ms": ms(&exact_hybrid), "vector_recall_at_10": round(exact_recall)},
        "graph": {"vector_ms": ms(&graph_vector), "hybrid_ms": ms(&graph_hybrid), "vector_recall_at_10": round(graph_recall)},
        "graph_recall_at_10_vs_exact": round(same as f64 / asked.max(1) as f64),
    }))
}
