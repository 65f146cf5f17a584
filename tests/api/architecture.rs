//! The workspace's layering, checked from its manifests: the server carries no load
//! generator or benchmark (they are `courier-sim` and `courier-bench`), and the simulator
//! knows courier only through its HTTP API (it does not link the server's crate).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The crate names listed under `[dependencies]` in the manifest at `path` (relative to the
/// server's crate).
fn dependencies(path: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .expect("manifest");
    manifest
        .lines()
        .skip_while(|line| line.trim() != "[dependencies]")
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('['))
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            line.split('=').next().map(|name| name.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_server_carries_no_load_generator_and_the_simulator_no_server() {
    let server = dependencies("Cargo.toml");
    assert!(server.contains(&"axum".to_owned()), "{server:?}");
    for generator in ["courier-sim", "courier-bench", "hdrhistogram", "httparse"] {
        assert!(
            !server.iter().any(|name| name == generator),
            "the server depends on {generator}: {server:?}"
        );
    }
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/bench")
            .exists(),
        "benchmarks live in crates/courier-bench"
    );
    let simulator = dependencies("crates/courier-sim/Cargo.toml");
    assert!(simulator.contains(&"reqwest".to_owned()), "{simulator:?}");
    assert!(
        !simulator.iter().any(|name| name == "courier"),
        "the simulator must reach courier over HTTP only: {simulator:?}"
    );
    let bench = dependencies("crates/courier-bench/Cargo.toml");
    assert!(
        bench.contains(&"courier".to_owned()) && bench.contains(&"courier-sim".to_owned()),
        "{bench:?}"
    );
}

/// The server's modules by floor: a module may import modules on its own floor or below,
/// never above (the map is `docs/architecture.md`). Floor 1 is the ground: the domain's
/// vocabulary and pure helpers. A module missing here fails the test, so a new module must
/// be placed.
const FLOORS: &[(&str, u8)] = &[
    ("domain", 1),
    ("geo", 1),
    ("clock", 1),
    ("shutdown", 1),
    ("text", 1),
    ("jobs", 2),
    ("error", 2),
    ("valkey", 2),
    ("market", 2),
    ("breaker", 2),
    ("store", 3),
    ("location", 3),
    ("cache", 3),
    ("auth", 3),
    ("ratelimit", 3),
    ("eta", 4),
    ("notify", 4),
    ("payments", 4),
    ("outbox", 4),
    ("dispatch", 5),
    ("live", 5),
    ("workflows", 6),
    ("telemetry", 6),
    ("seed", 6),
    ("cron", 7),
    ("workers", 7),
    ("api", 7),
    ("config", 8),
    ("admin", 9),
    ("startup", 9),
    ("cli", 10),
];

/// The modules of the order's workflow and its services, among which no import may loop.
const CORE: &[&str] = &[
    "workflows",
    "jobs",
    "dispatch",
    "payments",
    "notify",
    "eta",
    "domain",
];

/// Rust source with comments removed (line comments and doc comments; block comments are not
/// used in this crate), so that a path named in prose is not an import.
fn code_of(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths that `code` names through `crate::…`, as segments: in `use` lines (groups
/// `use crate::{a::b, c::{d, e}}` give `a::b`, `c::d` and `c::e`) and inline.
fn crate_paths(code: &str) -> BTreeSet<Vec<String>> {
    /// The paths of the use tree at the start of `tree`, each under `prefix`.
    fn expand(tree: &str, prefix: &[String], out: &mut BTreeSet<Vec<String>>) {
        let mut path = prefix.to_vec();
        let mut named_self = false;
        let mut rest = tree.trim_start();
        loop {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() {
                break;
            }
            rest = rest[ident.len()..].trim_start();
            if ident == "self" {
                named_self = true;
            } else {
                path.push(ident);
            }
            match rest.strip_prefix("::") {
                Some(next) => rest = next.trim_start(),
                None => break,
            }
        }
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand(&group[start..i], &path, out);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&group[start..i], &path, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else if !path.is_empty() && (path.len() > prefix.len() || named_self) {
            out.insert(path);
        }
    }
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        expand(&code[at + "crate::".len()..], &[], &mut found);
    }
    found
}

/// The top-level modules that `code` names through `crate::…`.
fn crate_modules(code: &str) -> BTreeSet<String> {
    crate_paths(code)
        .into_iter()
        .filter_map(|path| path.into_iter().next())
        .collect()
}

/// The server's module graph: for each top-level module of `src/`, the other modules its
/// files import.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, code) in sources() {
        let first = path.split('/').next().unwrap_or(&path);
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let imports = graph.entry(module.clone()).or_default();
        imports.extend(crate_modules(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// The server's file graph: for each file under `src/`, the files its `crate::…` paths lead
/// to (the file of the longest prefix of each path that is a module).
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let files: BTreeSet<String> = sources.iter().map(|(path, _)| path.clone()).collect();
    let file_of = |path: &[String]| -> Option<String> {
        (1..=path.len()).rev().find_map(|n| {
            let stem = path[..n].join("/");
            [format!("{stem}.rs"), format!("{stem}/mod.rs")]
                .into_iter()
                .find(|candidate| files.contains(candidate))
        })
    };
    sources
        .iter()
        .map(|(file, code)| {
            let imports = crate_paths(code)
                .iter()
                .filter_map(|path| file_of(path))
                .filter(|target| target != file)
                .collect();
            (file.clone(), imports)
        })
        .collect()
}

/// The graph's import cycles: its strongly connected components of more than one module
/// (Tarjan's algorithm), each sorted.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.graph.contains_key(next) {
                    continue;
                }
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top.to_owned());
                    if top == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found
}

#[test]
fn the_import_scanner_reads_use_groups_and_inline_paths_but_not_comments() {
    let code = code_of(
        "use crate::workflows::{self, machine};\nuse crate::{dispatch::offers, jobs::{Job, enqueue}};\n\
         // see crate::api for the handlers\nlet x = crate::store::begin(db);",
    );
    let found: Vec<String> = crate_modules(&code).into_iter().collect();
    assert_eq!(found, ["dispatch", "jobs", "store", "workflows"]);
    let paths: Vec<String> = crate_paths(&code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        paths,
        [
            "dispatch::offers",
            "jobs::Job",
            "jobs::enqueue",
            "store::begin",
            "workflows",
            "workflows::machine"
        ]
    );
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}

#[test]
fn modules_import_only_their_own_floor_or_below_and_never_in_a_loop() {
    let graph = module_graph();
    let floors: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let unplaced: Vec<&String> = graph
        .keys()
        .filter(|m| !floors.contains_key(m.as_str()))
        .collect();
    let mut upward = Vec::new();
    let mut edges = 0;
    for (module, imports) in &graph {
        for import in imports {
            edges += 1;
            let (Some(from), Some(to)) = (floors.get(module.as_str()), floors.get(import.as_str()))
            else {
                continue;
            };
            if to > from {
                upward.push(format!("{module} (floor {from}) -> {import} (floor {to})"));
            }
        }
    }
    let loops = cycles(&graph);
    let core: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .filter(|(m, _)| CORE.contains(&m.as_str()))
        .map(|(m, imports)| {
            let inner = imports
                .iter()
                .filter(|i| CORE.contains(&i.as_str()))
                .cloned()
                .collect();
            (m.clone(), inner)
        })
        .collect();
    let core_loops = cycles(&core);
    println!(
        "{} modules, {edges} module-to-module imports, {} pointing up, cycles: {:?}; \
         cycles between files: {:?}",
        graph.len(),
        upward.len(),
        loops.iter().map(Vec::len).collect::<Vec<_>>(),
        cycles(&file_graph())
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>()
    );
    assert!(unplaced.is_empty(), "modules with no floor: {unplaced:?}");
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
    assert!(
        core_loops.is_empty(),
        "import cycles among the workflow and its services: {core_loops:?}"
    );
    assert!(loops.is_empty(), "import cycles: {loops:?}");
    // A module's root and its own files may use each other (`auth/mod.rs` and
    // `auth/subjects.rs`); a loop of files across modules may not.
    let across: Vec<Vec<String>> = cycles(&file_graph())
        .into_iter()
        .filter(|files| {
            let module = |file: &String| file.split('/').next().map(str::to_owned);
            files.iter().map(module).collect::<BTreeSet<_>>().len() > 1
        })
        .collect();
    assert!(
        across.is_empty(),
        "import cycles between files of different modules: {across:?}"
    );
    for leaf in ["domain", "jobs"] {
        let imports = graph.get(leaf).cloned().unwrap_or_default();
        let allowed: &[&str] = if leaf == "domain" { &[] } else { &["domain"] };
        let extra: Vec<&String> = imports
            .iter()
            .filter(|i| !allowed.contains(&i.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{leaf} must import only {allowed:?}: {extra:?}"
        );
    }
}

/// The files under `src/` with their code (comments removed), paths relative to `src/`.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(root).expect("under src");
                let code = code_of(&std::fs::read_to_string(&path).expect("readable"));
                out.push((name.to_string_lossy().into_owned(), code));
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&src, &src, &mut out);
    out
}

/// Whether `code` writes the `orders` table (`UPDATE orders`, `INSERT INTO orders`,
/// `DELETE FROM orders`, in any case and spacing).
fn writes_orders(code: &str) -> bool {
    let mut words: Vec<String> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    words.push(String::new());
    words.windows(3).any(|w| {
        (w[0] == "update" && w[1] == "orders")
            || (w[0] == "insert" && w[1] == "into" && w[2] == "orders")
            || (w[0] == "delete" && w[1] == "from" && w[2] == "orders")
    })
}

#[test]
fn only_the_workflow_writes_the_orders_table() {
    assert!(writes_orders("sqlx::query(\"UPDATE orders SET x = 1\")"));
    assert!(writes_orders("\"insert  into\n orders (a)\""));
    assert!(!writes_orders("\"UPDATE offers SET x = 1 FROM orders\""));
    assert!(!writes_orders("\"INSERT INTO orders_archive (a)\""));
    let writers: Vec<String> = sources()
        .into_iter()
        .filter(|(path, code)| !path.starts_with("workflows/") && writes_orders(code))
        .map(|(path, _)| path)
        .collect();
    assert!(
        writers.is_empty(),
        "only src/workflows/ may write the orders table; also: {writers:?}"
    );
}

/// Every route is added with its description (`routes!` of handlers annotated with
/// `#[utoipa::path]`), so the router cannot serve a route the OpenAPI document lacks: no file
/// in the API adds one with axum's own `.route(…)`, `.route_service(…)` or `.nest_service(…)`.
#[test]
fn every_route_is_added_with_its_description() {
    let api: Vec<(String, String)> = sources()
        .into_iter()
        .filter(|(name, _)| name.starts_with("api/"))
        .collect();
    assert!(api.len() > 10, "the API's files are found: {}", api.len());
    for (name, code) in api {
        for undescribed in [
            ".route(",
            ".route_service(",
            ".nest_service(",
            "axum::routing",
        ] {
            assert!(
                !code.contains(undescribed),
                "src/{name} adds a route with `{undescribed}`: add it with `routes!` and `#[utoipa::path]` instead"
            );
        }
    }
}
