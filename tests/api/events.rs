//! Events leave the database: the outbox relay publishes every committed change to the Valkey
//! stream and to Kafka (a real tansu broker) in order per order, survives SIGKILL and a second
//! relay, parks what cannot be published, and feeds the SSE endpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use courier::auth::Role;
use courier::cron::{CronSettings, auto_complete, housekeeping};
use courier::outbox::kafka::{KafkaSettings, partition_of, record_key};
use courier::outbox::{OutboxSettings, SinkKind};
use rskafka::client::ClientBuilder;
use rskafka::client::partition::UnknownTopicHandling;

use crate::helpers::{
    Cast, SseReader, TestApp, WorkerProcess, assert_error, cast, eventually, kafka_brokers,
    spawn_app, stream_entries,
};

const PATIENCE: Duration = Duration::from_secs(20);

/// Each order's status events from the entries, in stream order.
fn statuses_by_order(entries: &[crate::helpers::Entry]) -> BTreeMap<i64, Vec<String>> {
    let mut by_order: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for e in entries
        .iter()
        .filter(|e| e.event_type == "order_status_changed")
    {
        by_order
            .entry(e.order_id)
            .or_default()
            .push(e.body["newStatus"].as_str().unwrap_or_default().to_owned());
    }
    by_order
}

/// Checks published events against the outbox: every committed event is there, each order's
/// first sightings come in sequence order, and a repeated event id always carries the same
/// sequence. `published` is (order id, event id, sequence) in the order a consumer reads them.
async fn assert_complete_and_ordered(app: &TestApp, published: &[(i64, String, i64)], sink: &str) {
    let outbox: Vec<(uuid::Uuid, i64, i64)> =
        sqlx::query_as("SELECT event_id, aggregate_id, id FROM outbox ORDER BY id")
            .fetch_all(&app.db)
            .await
            .expect("outbox");
    let mut sequence_of: HashMap<&str, i64> = HashMap::new();
    let mut last_per_order: HashMap<i64, i64> = HashMap::new();
    let mut duplicates = 0;
    for (order, event_id, sequence) in published {
        if let Some(seen) = sequence_of.insert(event_id, *sequence) {
            assert_eq!(seen, *sequence, "{sink}: a duplicate with another sequence");
            duplicates += 1;
            continue;
        }
        let last = last_per_order.entry(*order).or_insert(0);
        assert!(
            *sequence > *last,
            "{sink}: order {order} went back from sequence {last} to {sequence}"
        );
        *last = *sequence;
    }
    for (event_id, order, sequence) in &outbox {
        assert_eq!(
            sequence_of.get(event_id.to_string().as_str()),
            Some(sequence),
            "{sink}: event {event_id} of order {order} is missing"
        );
    }
    assert_eq!(
        sequence_of.len(),
        outbox.len(),
        "{sink}: events not in the outbox"
    );
    eprintln!("{sink}: {} events, {} duplicates", outbox.len(), duplicates);
}

/// Every record of `topic`, partition by partition: (partition, key, event id, sequence).
async fn kafka_records(topic: &str) -> Vec<(i32, i64, String, i64)> {
    let client = ClientBuilder::new(kafka_brokers())
        .build()
        .await
        .expect("kafka client");
    let partitions = client
        .list_topics()
        .await
        .expect("topics")
        .into_iter()
        .find(|t| t.name == topic)
        .expect("the relay created the topic")
        .partitions;
    let mut records = Vec::new();
    for partition in partitions {
        let pc = client
            .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let mut offset = 0;
        loop {
            let (batch, high_watermark) = pc
                .fetch_records(offset, 1..5_000_000, 200)
                .await
                .expect("fetch");
            for r in &batch {
                let key: i64 = String::from_utf8_lossy(r.record.key.as_deref().unwrap_or_default())
                    .parse()
                    .expect("the key is the order id");
                let body: serde_json::Value =
                    serde_json::from_slice(r.record.value.as_deref().unwrap_or_default())
                        .expect("json value");
                assert_eq!(body["orderId"], key);
                assert_eq!(
                    r.record.headers.get("event_id").map(Vec::as_slice),
                    body["eventId"].as_str().map(str::as_bytes)
                );
                assert_eq!(
                    r.record.headers.get("schema_version").map(Vec::as_slice),
                    Some(&b"1"[..])
                );
                records.push((
                    partition,
                    key,
                    body["eventId"].as_str().expect("event id").to_owned(),
                    body["sequence"].as_i64().expect("sequence"),
                ));
                offset = r.offset + 1;
            }
            if offset >= high_watermark || batch.is_empty() {
                break;
            }
        }
    }
    records
}

fn kafka_settings(topic: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: kafka_brokers(),
        topic: topic.to_owned(),
        partitions: 3,
        timeout: Duration::from_secs(10),
    }
}

/// Drives `orders` orders of `cast` through confirm, preparing and (half of them) a cancel.
async fn busy_orders(app: &TestApp, cast: &Cast, orders: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..orders {
        let order = app.confirmed_order(cast).await;
        if i % 2 == 0 {
            app.act(order, "cancel", Role::Customer, cast.customer)
                .await;
        } else {
            app.act(order, "start-preparing", Role::Restaurant, cast.restaurant)
                .await;
        }
        ids.push(order);
    }
    ids
}

#[tokio::test]
async fn the_relay_publishes_every_change_in_order_with_a_schema_version() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.confirmed_order(&cast).await;
    app.act(order, "cancel", Role::Customer, cast.customer)
        .await;
    assert!(app.unpublished().await >= 3);
    let _relay = app.spawn_relay();
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 0 }).await);

    let entries = stream_entries(app.state.valkey.prefix()).await;
    assert_eq!(
        statuses_by_order(&entries)[&order],
        ["PAYMENT_PENDING", "PLACED", "CONFIRMED", "CANCELLED"]
    );
    let first = &entries[0].body;
    assert_eq!(first["schemaVersion"], 1);
    assert_eq!(first["orderId"], order);
    assert_eq!(first["customerId"], cast.customer);
    assert_eq!(first["restaurantId"], cast.restaurant);
    assert!(first["eventId"].as_str().is_some());
    let sequences: Vec<i64> = entries.iter().map(|e| e.sequence).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    // The operators' view agrees.
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND published_at IS NOT NULL",
    )
    .bind(order)
    .fetch_one(&app.db)
    .await
    .expect("count");
    assert_eq!(published, i64::try_from(entries.len()).expect("small"));
}

#[tokio::test]
async fn a_relay_killed_mid_batch_and_then_two_relays_lose_nothing_and_keep_each_orders_order() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    busy_orders(&app, &cast, 40).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert!(total >= 120, "{total} events");
    let topic = format!("courier.test.{}", app.db_name);
    let env = [
        ("COURIER_EVENT_SINKS", "stream,kafka"),
        ("COURIER_KAFKA_BROKERS", &kafka_brokers().join(",")),
        ("COURIER_KAFKA_TOPIC", topic.as_str()),
        ("COURIER_KAFKA_PARTITIONS", "3"),
        ("COURIER_RELAY_BATCH", "1"),
        ("COURIER_RELAY_POLL", "100ms"),
    ];
    // A relay that is killed while it publishes: some rows are out, the rest are not.
    let first = WorkerProcess::start(&app, &env);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.unpublished().await == total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    let left = app.unpublished().await;
    assert!(left > 0, "the relay finished before it was killed");
    // More changes commit while no relay runs, then two relays start at once; one of them
    // (the leader or the standby) is killed once publishing is under way.
    busy_orders(&app, &cast, 30).await;
    let waiting = app.unpublished().await;
    let a = WorkerProcess::start(&app, &env);
    let b = WorkerProcess::start(&app, &env);
    assert!(eventually(PATIENCE, || async { app.unpublished().await < waiting }).await);
    a.kill();
    assert!(
        eventually(Duration::from_secs(60), || async {
            app.unpublished().await == 0
        })
        .await,
        "{} events never published",
        app.unpublished().await
    );

    let prefix = format!("test:{}:", app.db_name);
    let entries = stream_entries(&prefix).await;
    let from_stream: Vec<(i64, String, i64)> = entries
        .iter()
        .map(|e| (e.order_id, e.event_id.clone(), e.sequence))
        .collect();
    assert_complete_and_ordered(&app, &from_stream, "stream").await;

    let records = kafka_records(&topic).await;
    for (partition, key, _, _) in &records {
        assert_eq!(
            usize::try_from(*partition).expect("partition"),
            partition_of(&record_key(*key), 3),
            "order {key} outside its partition"
        );
    }
    let from_kafka: Vec<(i64, String, i64)> = records
        .into_iter()
        .map(|(_, key, event, sequence)| (key, event, sequence))
        .collect();
    assert_complete_and_ordered(&app, &from_kafka, "kafka").await;
    drop(b);
}

#[tokio::test]
async fn the_kafka_sink_keys_each_orders_events_into_one_partition() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let orders = busy_orders(&app, &cast, 8).await;
    let topic = format!("courier.test.inproc.{}", app.db_name);
    let settings = OutboxSettings {
        sinks: vec![SinkKind::Kafka],
        kafka: Some(kafka_settings(&topic)),
        ..OutboxSettings::default()
    };
    let _relay = app.spawn_relay_with(&settings);
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 0 }).await);
    let records = kafka_records(&topic).await;
    let partitions: HashMap<i64, HashSet<i32>> =
        records
            .iter()
            .fold(HashMap::new(), |mut acc, (p, key, _, _)| {
                acc.entry(*key).or_default().insert(*p);
                acc
            });
    assert_eq!(partitions.len(), orders.len());
    assert!(partitions.values().all(|p| p.len() == 1));
    let published: Vec<(i64, String, i64)> = records
        .into_iter()
        .map(|(_, key, event, sequence)| (key, event, sequence))
        .collect();
    assert_complete_and_ordered(&app, &published, "kafka").await;
}

#[tokio::test]
async fn a_kafka_outage_holds_events_back_and_they_follow_once_it_answers() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    app.confirmed_order(&cast).await;
    let mut settings = OutboxSettings {
        sinks: vec![SinkKind::Stream, SinkKind::Kafka],
        kafka: Some(KafkaSettings {
            brokers: vec![format!("127.0.0.1:{}", crate::helpers::dead_port())],
            timeout: Duration::from_secs(1),
            ..kafka_settings("courier.never")
        }),
        ..OutboxSettings::default()
    };
    settings.relay.poll_interval = Duration::from_millis(100);
    let relay = app.spawn_relay_with(&settings);
    // The failure is recorded on the oldest row, and nothing counts as published.
    assert!(
        eventually(PATIENCE, || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE attempts > 0 AND last_error LIKE 'kafka:%'",
            )
            .fetch_one(&app.db)
            .await
            .expect("count")
                > 0
        })
        .await
    );
    assert_eq!(
        app.unpublished().await,
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&app.db)
            .await
            .expect("count")
    );
    drop(relay);
    let topic = format!("courier.test.outage.{}", app.db_name);
    settings.kafka = Some(kafka_settings(&topic));
    let _relay = app.spawn_relay_with(&settings);
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 0 }).await);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(
        kafka_records(&topic).await.len(),
        usize::try_from(events).expect("small")
    );
}

#[tokio::test]
async fn an_event_too_large_is_parked_and_operators_can_release_it() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let big = "x".repeat(4096);
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, payload)
         VALUES ($1, 'dispatch', 'order', $2, 'oversized', jsonb_build_object('blob', $3::text))",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(order)
    .bind(&big)
    .execute(&app.db)
    .await
    .expect("insert");
    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let mut settings = OutboxSettings::default();
    settings.relay.max_event_bytes = 2048;
    settings.relay.poll_interval = Duration::from_millis(100);
    let relay = app.spawn_relay_with(&settings);
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 1 }).await);
    // The events after it went out.
    let entries = stream_entries(app.state.valkey.prefix()).await;
    assert_eq!(
        statuses_by_order(&entries)[&order],
        ["PAYMENT_PENDING", "PLACED", "CONFIRMED"]
    );

    let admin = courier::admin::AdminContext {
        db: app.db.clone(),
        location: app.state.location.clone(),
        cron: CronSettings::default(),
    };
    let run = |args: &[&str]| {
        let mut argv = vec!["admin", "--yes", "--json"];
        argv.extend_from_slice(args);
        <AdminCli as clap::Parser>::parse_from(argv).admin
    };
    let stats = courier::admin::execute(&admin, &run(&["events", "stats"]))
        .await
        .expect("stats");
    assert_eq!(stats.json["events"]["parked"], 1);
    assert_eq!(stats.json["events"]["unpublished"], 0);
    let parked = courier::admin::execute(&admin, &run(&["events", "list", "--parked"]))
        .await
        .expect("list");
    let rows = parked.json["events"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]["last_error"]
            .as_str()
            .expect("reason")
            .contains("2048")
    );
    let event_id = rows[0]["event_id"].as_str().expect("id").to_owned();
    assert!(
        courier::admin::execute(&admin, &run(&["events", "retry", "not-a-uuid"]))
            .await
            .is_err()
    );
    // Released with a limit that now fits, it is published.
    drop(relay);
    courier::admin::execute(&admin, &run(&["events", "retry", &event_id]))
        .await
        .expect("retry");
    settings.relay.max_event_bytes = 1024 * 1024;
    let _relay = app.spawn_relay_with(&settings);
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 0 }).await);
    let entries = stream_entries(app.state.valkey.prefix()).await;
    assert!(entries.iter().any(|e| e.event_id == event_id));
}

/// `courier admin …` parsed as the binary parses it.
#[derive(Debug, clap::Parser)]
struct AdminCli {
    #[command(flatten)]
    admin: courier::admin::AdminArgs,
}

#[tokio::test]
async fn housekeeping_prunes_published_events_past_their_retention_only() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    app.confirmed_order(&cast).await;
    app.placed_order(&cast).await;
    sqlx::query(
        "UPDATE outbox SET published_at = now() - INTERVAL '4 days'
         WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2)",
    )
    .execute(&app.db)
    .await
    .expect("age");
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .expect("count");
    let summary = housekeeping::run(&app.db, &CronSettings::default())
        .await
        .expect("housekeeping");
    assert_eq!(summary["outbox_events_pruned"], 2);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .expect("count");
    assert_eq!(after, before - 2);
    assert_eq!(app.unpublished().await, after);
}

#[tokio::test]
async fn the_event_streams_refuse_strangers_and_bad_resume_points() {
    let app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let stranger = crate::helpers::insert_user(&app.db, "customer").await;
    let path = format!("/v1/orders/{order}/events");
    let anonymous = app
        .client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .expect("sent");
    assert_error(anonymous, 401, "missing_token").await;
    assert_error(
        app.sse(&path, Role::Customer, stranger, None).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.sse(&path, Role::Customer, cast.customer, Some("yesterday"))
            .await,
        400,
        "invalid_last_event_id",
    )
    .await;
    let other_driver = crate::helpers::insert_driver(&app.db).await;
    let driver = crate::helpers::insert_driver(&app.db).await;
    assert_error(
        app.sse(
            &format!("/v1/drivers/{driver}/offers/stream"),
            Role::Driver,
            other_driver,
            None,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.sse(
            &format!("/v1/restaurants/{}/orders/stream", cast.restaurant),
            Role::Customer,
            cast.customer,
            None,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.sse("/v1/drivers/999999/offers/stream", Role::Operator, 1, None)
            .await,
        404,
        "not_found",
    )
    .await;
    // Nothing above left a subscriber behind.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.state.live.subscribers() == 0
        })
        .await
    );
}

/// Events until the order reaches `status`; returns them and the statuses passed on the way.
async fn until_status(
    reader: &mut SseReader,
    status: &str,
) -> (Vec<crate::helpers::SseEvent>, Vec<String>) {
    let mut events = Vec::new();
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some(status) {
        let more = reader.until("order_status_changed", PATIENCE).await;
        statuses.extend(
            more.iter()
                .filter(|e| e.event == "order_status_changed")
                .map(|e| {
                    e.json()["newStatus"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                }),
        );
        events.extend(more);
    }
    (events, statuses)
}

/// The offer pending for `driver` (id), once matching made it.
pub(crate) async fn pending_offer(app: &TestApp, driver: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let offer: Option<i64> =
            sqlx::query_scalar("SELECT id FROM offers WHERE driver_id = $1 AND status = 'pending'")
                .bind(driver)
                .fetch_optional(&app.db)
                .await
                .expect("offer");
        if let Some(offer) = offer {
            return offer;
        }
        assert!(tokio::time::Instant::now() < deadline, "no offer was made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_sse_client_sees_the_whole_life_of_an_order_with_positions_and_resumes_without_a_gap() {
    let app = spawn_app().await;
    let _relay = app.spawn_relay();
    let _workers = app.spawn_workers();
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = app.placed_order(&cast).await;
    let path = format!("/v1/orders/{order}/events");
    let (mut customer, snapshot) = app.follow(&path, Role::Customer, cast.customer).await;
    assert_eq!(snapshot.json()["order"]["status"], "PLACED");

    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let offer = pending_offer(&app, driver).await;
    let accepted = app
        .post_as(
            &format!("/v1/offers/{offer}/accept"),
            Role::Driver,
            driver,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(accepted.status().as_u16(), 200);
    let seen = customer.until("driver_assigned", PATIENCE).await;
    let last_id = seen.last().and_then(|e| e.id.clone()).expect("an id");
    assert!(
        seen.iter()
            .any(|e| e.event == "order_status_changed" && e.json()["newStatus"] == "CONFIRMED")
    );
    assert_eq!(seen.last().expect("event").json()["driverId"], driver);
    // The customer's app goes away while the order moves on.
    drop(customer);
    for step in ["start-preparing", "ready"] {
        app.act(order, step, Role::Restaurant, cast.restaurant)
            .await;
    }
    assert_eq!(
        app.act(order, "pickup", Role::Driver, driver)
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 0 }).await);

    // It comes back with the last id it saw: the missed changes, in order, then live.
    let mut customer = SseReader::new(
        app.sse(&path, Role::Customer, cast.customer, Some(&last_id))
            .await,
    );
    let (missed, statuses) = until_status(&mut customer, "PICKED_UP").await;
    assert!(missed.iter().all(|e| e.event != "snapshot"), "{missed:?}");
    assert_eq!(statuses, ["PREPARING", "READY_FOR_PICKUP", "PICKED_UP"]);

    // On its way: the driver's reports reach the customer.
    // (Reported until one arrives: the first may come before the subscription is made.)
    let here = TestApp::north_of_restaurant(100.0);
    let position = app
        .report_until_position(&mut customer, driver, here)
        .await
        .expect("a driver_position event");
    assert_eq!(position["driverId"], driver);
    assert_eq!(position["lat"], here.lat);

    assert_eq!(
        app.act(order, "deliver", Role::Driver, driver)
            .await
            .status()
            .as_u16(),
        200
    );
    assert!(
        eventually(PATIENCE, || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM payments WHERE order_id = $1 AND status = 'captured'",
            )
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("count")
                == 1
        })
        .await
    );
    let settings = CronSettings {
        auto_complete_after: Duration::ZERO,
        ..CronSettings::default()
    };
    auto_complete::run(&app.db, &app.state.location, &settings)
        .await
        .expect("auto-complete");
    let (_, ends) = until_status(&mut customer, "COMPLETED").await;
    assert_eq!(ends, ["DELIVERED", "COMPLETED"]);
    // The stream ends at the terminal state.
    while customer.next(PATIENCE).await.is_some() {}
    assert!(customer.ended, "the stream did not end after COMPLETED");
}

#[tokio::test]
async fn a_driver_sees_an_offer_the_moment_it_is_made_and_its_withdrawal() {
    let app = spawn_app().await;
    let _relay = app.spawn_relay();
    let _workers = app.spawn_workers();
    let cast = cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let (mut stream, snapshot) = app
        .follow(
            &format!("/v1/drivers/{driver}/offers/stream"),
            Role::Driver,
            driver,
        )
        .await;
    assert_eq!(snapshot.json()["offers"], serde_json::json!([]));
    let (mut restaurant, _) = app
        .follow(
            &format!("/v1/restaurants/{}/orders/stream", cast.restaurant),
            Role::Restaurant,
            cast.restaurant,
        )
        .await;

    let order = app.confirmed_order(&cast).await;
    // The restaurant hears of its new order without polling.
    let (_, statuses) = until_status(&mut restaurant, "PLACED").await;
    assert_eq!(statuses, ["PLACED"]);

    let offered = stream.until("offer_made", PATIENCE).await;
    let received = chrono::Utc::now();
    let offer = offered.last().expect("offer").json();
    assert_eq!(offer["orderId"], order);
    let details = &offer["details"];
    assert_eq!(details["driver_id"], driver);
    assert!(details["pickup"]["lat"].as_f64().is_some());
    assert!(details["dropoff"]["address"]["line1"].as_str().is_some());
    assert!(details["expires_at"].as_str().is_some());
    let made: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM offers WHERE id = $1")
            .bind(details["offer_id"].as_i64().expect("offer id"))
            .fetch_one(&app.db)
            .await
            .expect("offer row");
    let expires: chrono::DateTime<chrono::Utc> = details["expires_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("expiry");
    eprintln!(
        "offer reached the driver {} ms after it was made",
        (received - made).num_milliseconds()
    );
    assert!(received < expires, "the offer arrived after it expired");

    // Unanswered, it lapses (3 s in tests), and the driver's stream says so.
    let lapsed = stream.until("offer_expired", PATIENCE).await;
    assert_eq!(
        lapsed.last().expect("event").json()["details"]["offer_id"],
        details["offer_id"]
    );
    // A customer cancel reaches the restaurant at once.
    app.act(order, "cancel", Role::Customer, cast.customer)
        .await;
    let (_, statuses) = until_status(&mut restaurant, "CANCELLED").await;
    assert_eq!(statuses, ["CONFIRMED", "CANCELLED"]);
}

#[tokio::test]
async fn open_streams_end_when_the_server_shuts_down_so_it_can_drain() {
    let mut app = spawn_app().await;
    let cast = cast(&app.db).await;
    let order = app.placed_order(&cast).await;
    let (mut stream, _) = app
        .follow(
            &format!("/v1/orders/{order}/events"),
            Role::Customer,
            cast.customer,
        )
        .await;
    app.shutdown().await;
    while stream.next(PATIENCE).await.is_some() {}
    assert!(stream.ended, "the stream outlived the server");
    assert!(app.state.live.is_closed());
}

#[tokio::test]
async fn a_customer_cancel_reaches_the_assigned_driver_at_once() {
    let app = spawn_app().await;
    let _relay = app.spawn_relay();
    let cast = cast(&app.db).await;
    let order = app.confirmed_order(&cast).await;
    // (Events carry the parties as they are when published: let the earlier ones go out
    // before the driver is assigned.)
    assert!(eventually(PATIENCE, || async { app.unpublished().await == 0 }).await);
    let driver = crate::helpers::insert_driver(&app.db).await;
    sqlx::query("UPDATE orders SET driver_id = $2 WHERE id = $1")
        .bind(order)
        .bind(driver)
        .execute(&app.db)
        .await
        .expect("assign");
    let (mut stream, snapshot) = app
        .follow(
            &format!("/v1/drivers/{driver}/offers/stream"),
            Role::Driver,
            driver,
        )
        .await;
    assert_eq!(snapshot.json()["orders"][0]["id"], order);
    app.act(order, "cancel", Role::Customer, cast.customer)
        .await;
    let (events, statuses) = until_status(&mut stream, "CANCELLED").await;
    assert_eq!(statuses, ["CANCELLED"]);
    assert_eq!(events.last().expect("event").json()["driverId"], driver);
}
