//! Rewards (answer extraction, format, length, weighting, panics and timeouts) and the
//! generated arithmetic task.

use serde_json::{json, Value};
use smelt_rollouts::rewards::{
    extract_answer, parse_number, FormatRegex, LengthPenalty, LengthShape, LengthUnit, MathAnswer,
};
use smelt_rollouts::tasks::ArithmeticTask;
use smelt_rollouts::{Reward, WeightedRewards};
use std::time::{Duration, Instant};

fn math(completion: &str, answer: Value) -> Option<f32> {
    MathAnswer::default().score("", completion, &json!({ "answer": answer }))
}

#[test]
fn answer_extraction_prefers_boxed_then_hashes_then_last_number() {
    assert_eq!(
        extract_answer(r"so 3 then \boxed{42} and 7").as_deref(),
        Some("42")
    );
    assert_eq!(
        extract_answer(r"\boxed{1} then \boxed{\frac{1}{2}}").as_deref(),
        Some(r"\frac{1}{2}")
    );
    assert_eq!(
        extract_answer("steps 5 and 6\n#### 1,234\nbye 9").as_deref(),
        Some("1,234")
    );
    assert_eq!(extract_answer("17 plus 25 is 42.").as_deref(), Some("42"));
    assert_eq!(
        extract_answer("it is -3.5 degrees").as_deref(),
        Some("-3.5")
    );
    assert_eq!(extract_answer("no digits here"), None);
    assert_eq!(extract_answer(r"\boxed{7"), Some("7".into())); // unbalanced box: last number
    assert_eq!(parse_number(r"\frac{1}{4}"), Some(0.25));
    assert_eq!(parse_number("-\\frac{3}{2}"), Some(-1.5));
    assert_eq!(parse_number("$1,000.50"), Some(1000.5));
    assert_eq!(parse_number("3/4"), Some(0.75));
    assert_eq!(parse_number("x = 12"), Some(12.0));
}

#[test]
fn math_answer_compares_numerically() {
    assert_eq!(math(r"The answer is \boxed{42}.", json!("42")), Some(1.0));
    assert_eq!(math("#### 42.0", json!(42)), Some(1.0));
    assert_eq!(math("17 plus 25 is 42.", json!("42")), Some(1.0));
    assert_eq!(math("17 plus 25 is 43.", json!("42")), Some(0.0));
    assert_eq!(math("it is -8", json!("-8")), Some(1.0));
    assert_eq!(math("it is 8", json!("-8")), Some(0.0)); // the sign matters
    assert_eq!(math("about 0.5", json!(r"\frac{1}{2}")), Some(1.0));
    assert_eq!(math("2.50", json!("2.5")), Some(1.0));
    assert_eq!(math("I don't know", json!("42")), Some(0.0));
    // No answer in the row: not applicable.
    assert_eq!(MathAnswer::default().score("", "42", &json!({})), None);
    assert_eq!(math("42", json!("forty-two")), None);
}

#[test]
fn format_and_length_rewards() {
    let f = FormatRegex::new(r"(?s)^<think>.*</think>\s*<answer>.*</answer>$", 0.5).unwrap();
    assert_eq!(
        f.score("", "<think>a</think> <answer>4</answer>", &json!({})),
        Some(0.5)
    );
    assert_eq!(f.score("", "4", &json!({})), Some(0.0));
    assert!(FormatRegex::new("(unclosed", 1.0)
        .unwrap_err()
        .to_string()
        .contains("(unclosed"));

    // DAPO soft overlong: max 10, cache 4 → free up to 6, -0.5 at 8, -1 past 10.
    let soft = LengthPenalty::new(
        LengthShape::Soft {
            max_len: 10,
            cache_len: 4,
        },
        LengthUnit::Chars,
    );
    assert_eq!(soft.penalty(6), 0.0);
    assert_eq!(soft.penalty(8), -0.5);
    assert_eq!(soft.penalty(10), -1.0);
    assert_eq!(soft.penalty(11), -1.0);
    assert_eq!(soft.score("", "12345678", &json!({})), Some(-0.5));
    let lin = LengthPenalty::new(LengthShape::Linear { max_len: 4 }, LengthUnit::Tokens);
    assert_eq!(
        lin.score("", "", &json!({"completion_tokens": 1})),
        Some(-0.25)
    );
    assert_eq!(
        lin.score("", "", &json!({"completion_tokens": 9})),
        Some(-1.0)
    );
    assert_eq!(lin.score("", "", &json!({})), None); // no token count: not applicable
    let words = LengthPenalty::new(LengthShape::Linear { max_len: 4 }, LengthUnit::Words);
    assert_eq!(words.score("", " two  words ", &json!({})), Some(-0.5));
}

struct Panics;
impl Reward for Panics {
    fn name(&self) -> &str {
        "panics"
    }
    fn score(&self, _: &str, _: &str, _: &Value) -> Option<f32> {
        panic!("reward bug")
    }
}

struct Sleeps(Duration);
impl Reward for Sleeps {
    fn name(&self) -> &str {
        "sleeps"
    }
    fn score(&self, _: &str, _: &str, _: &Value) -> Option<f32> {
        std::thread::sleep(self.0);
        Some(1.0)
    }
}

fn weighted() -> Vec<(Box<dyn Reward>, f32)> {
    vec![
        (Box::new(MathAnswer::default()), 2.0),
        (Box::new(FormatRegex::new(r"\.$", 0.5).unwrap()), 1.0),
        (Box::new(Panics), 1.0),
    ]
}

#[test]
fn weighted_sum_survives_a_panicking_reward() {
    for timeout in [None, Some(Duration::from_secs(5))] {
        let rewards = WeightedRewards::new(weighted())
            .unwrap()
            .with_timeout(timeout);
        let (total, values) = rewards.score_all("q", "3 plus 4 is 7.", &json!({"answer": "7"}));
        assert_eq!(values["math_answer"], Some(1.0));
        assert_eq!(values["format"], Some(0.5));
        assert_eq!(values["panics"], None);
        assert_eq!(total, 2.0 * 1.0 + 0.5);
    }
}

#[test]
fn slow_reward_times_out_and_others_still_score() {
    let rewards = WeightedRewards::new(vec![
        (Box::new(Sleeps(Duration::from_secs(3))), 1.0),
        (Box::new(MathAnswer::default()), 1.0),
    ])
    .unwrap()
    .with_timeout(Some(Duration::from_millis(100)));
    let t0 = Instant::now();
    let (total, values) = rewards.score_all("q", "7", &json!({"answer": 7}));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(values["sleeps"], None);
    assert_eq!(total, 1.0);
}

#[test]
fn duplicate_reward_names_are_an_error() {
    let dup: Vec<(Box<dyn Reward>, f32)> = vec![
        (Box::new(MathAnswer::default()), 1.0),
        (Box::new(MathAnswer::default()), 1.0),
    ];
    let err = WeightedRewards::new(dup).unwrap_err().to_string();
    assert!(err.contains("math_answer"), "{err}");
}

/// Evaluates the nested `a op b` text independently of the generator.
fn eval(expr: &str) -> i64 {
    let expr = expr.trim();
    if let Some(inner) = expr.strip_prefix('(') {
        // "(...) op b": find the matching parenthesis
        let mut depth = 1;
        let close = inner
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .unwrap()
            .0;
        let left = eval(&inner[..close]);
        let rest: Vec<&str> = inner[close + 1..].split_whitespace().collect();
        return apply(left, rest[0], rest[1].parse().unwrap());
    }
    let parts: Vec<&str> = expr.split_whitespace().collect();
    apply(
        parts[0].parse().unwrap(),
        parts[1],
        parts[2].parse().unwrap(),
    )
}

fn apply(a: i64, op: &str, b: i64) -> i64 {
    match op {
        "plus" => a + b,
        "minus" => a - b,
        "times" => a * b,
        _ => panic!("unknown op {op}"),
    }
}

#[test]
fn arithmetic_task_is_deterministic_and_correct() {
    let task = ArithmeticTask {
        seed: 11,
        max_operand: 30,
        num_operations: 3,
    };
    let rows = task.rows(40).unwrap();
    assert_eq!(rows, task.rows(40).unwrap());
    assert_eq!(rows[..10], task.rows(10).unwrap()[..]); // a prefix
    assert_ne!(
        rows,
        ArithmeticTask {
            seed: 12,
            ..task.clone()
        }
        .rows(40)
        .unwrap()
    );
    for r in &rows {
        assert_eq!(r.prompt, format!("What is {}?", r.expression));
        assert_eq!(r.answer, eval(&r.expression).to_string(), "{}", r.prompt);
        assert_eq!(r.expression.matches(['+', ' ']).count(), 6); // 3 ops → 6 spaces
    }
    let one = ArithmeticTask {
        seed: 0,
        max_operand: 50,
        num_operations: 1,
    };
    for r in one.rows(50).unwrap() {
        let n: Vec<i64> = r
            .expression
            .split(' ')
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(n.iter().all(|&x| (0..=50).contains(&x)));
        assert_eq!(r.answer, eval(&r.expression).to_string());
    }
    assert!(ArithmeticTask {
        max_operand: 0,
        ..one.clone()
    }
    .rows(1)
    .is_err());
    assert!(ArithmeticTask {
        num_operations: 0,
        ..one
    }
    .rows(1)
    .is_err());
}

#[test]
fn arithmetic_rows_are_trl_formats_that_math_answer_scores() {
    let task = ArithmeticTask::default();
    let rows = task.rows(20).unwrap();
    let sft = task.sft_rows(20).unwrap();
    let pref = task.preference_rows(20).unwrap();
    let grpo = task.prompts(20).unwrap();
    let reward = MathAnswer::default();
    for i in 0..20 {
        let m = &sft[i]["messages"];
        assert_eq!(m[0]["role"], "user");
        assert_eq!(m[0]["content"], rows[i].prompt.as_str());
        assert_eq!(m[1]["role"], "assistant");
        let reply = m[1]["content"].as_str().unwrap();
        assert_eq!(
            reply,
            format!("{} is {}.", rows[i].expression, rows[i].answer)
        );
        assert_eq!(grpo[i]["prompt"][0]["content"], rows[i].prompt.as_str());
        assert_eq!(reward.score("", reply, &grpo[i]), Some(1.0));
        let chosen = pref[i]["chosen"][0]["content"].as_str().unwrap();
        let rejected = pref[i]["rejected"][0]["content"].as_str().unwrap();
        assert_eq!(pref[i]["prompt"][0]["content"], rows[i].prompt.as_str());
        assert_eq!(reward.score("", chosen, &grpo[i]), Some(1.0));
        assert_eq!(reward.score("", rejected, &grpo[i]), Some(0.0));
        let off = rejected.parse::<i64>().unwrap() - chosen.parse::<i64>().unwrap();
        assert!((1..=3).contains(&off.abs()));
    }
    // The reference script's first SFT row has this shape.
    assert!(sft[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .ends_with('.'));
}
