//! courier on a Valkey Cluster (three primaries, started by `ops/valkey-cluster up`, which
//! `just test` runs): two markets whose keys sit on different primaries; drivers report,
//! searches answer and orders are matched in both, a driver crosses from one node's market
//! to the other's, and the rate limiter counts on the cluster; an order's live stream (the
//! events stream read with a blocking read, driver positions by subscription) on the cluster.

use std::collections::HashMap;
use std::time::Duration;

use courier::auth::Role;
use courier::ratelimit::Limits;
use serde_json::{Value, json};

use crate::helpers::{
    Cast, OPERATOR, TestApp, TestAppOptions, eventually, fast_dispatch, insert_driver, insert_item,
    insert_restaurant, insert_user, nearby_ids, order_body, spawn_app_with,
};

/// The cluster's seed nodes; `just test` starts the cluster and sets them.
fn cluster_nodes() -> Vec<String> {
    let nodes = std::env::var("COURIER_TEST_VALKEY_CLUSTER_NODES").expect(
        "COURIER_TEST_VALKEY_CLUSTER_NODES names the test cluster's nodes: run `just test`, \
         or `ops/valkey-cluster up` and set it to what that prints",
    );
    nodes.split(',').map(str::to_owned).collect()
}

/// The port of the primary serving each slot range, from `CLUSTER SLOTS`.
async fn slot_owners(node: &str) -> Vec<(u16, u16, u16)> {
    let client = redis::Client::open(node).expect("node url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a cluster node");
    let slots: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<Vec<redis::Value>>(&mut conn)
        .await
        .expect("CLUSTER SLOTS")
        .into_iter()
        .map(|range| {
            let redis::Value::Array(parts) = range else {
                panic!("a slot range is an array");
            };
            let number = |v: &redis::Value| match v {
                redis::Value::Int(n) => u16::try_from(*n).expect("fits"),
                other => panic!("not a number: {other:?}"),
            };
            let redis::Value::Array(primary) = &parts[2] else {
                panic!("a primary is an array");
            };
            (
                number(&parts[0]),
                number(&parts[1]),
                (String::new(), number(&primary[1])),
            )
        })
        .collect();
    slots
        .into_iter()
        .map(|(start, end, (_, port))| (start, end, port))
        .collect()
}

fn owner(owners: &[(u16, u16, u16)], key: &str) -> u16 {
    let slot = courier::valkey::slot(key);
    owners
        .iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|(_, _, port)| *port)
        .expect("every slot is served")
}

/// Whether `key` exists, asked of the node on `port` directly (not through the cluster
/// client): the key is on that node.
async fn on_node(port: u16, key: &str) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS on its own node")
}

/// A restaurant with two dishes at (lat, lon), and a customer.
async fn cast_at(app: &TestApp, lat: f64, lon: f64) -> Cast {
    let restaurant = insert_restaurant(&app.db, "Corner", "burgers", lat, lon).await;
    Cast {
        restaurant,
        burger: insert_item(&app.db, restaurant, "Burger", 1_250).await,
        fries: insert_item(&app.db, restaurant, "Fries", 399).await,
        customer: insert_user(&app.db, "customer").await,
    }
}

#[tokio::test]
async fn two_markets_on_different_nodes_report_search_and_match() {
    let nodes = cluster_nodes();
    let app = spawn_app_with(TestAppOptions {
        valkey_cluster_nodes: nodes.clone(),
        rate_limits: Limits::default(),
        ..TestAppOptions::default()
    })
    .await;
    let ready = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status().as_u16(), 200, "ready on the cluster");
    let _workers = app.spawn_workers_with(fast_dispatch());

    // Two markets whose hash tags sit on different primaries.
    let owners = slot_owners(&nodes[0]).await;
    let first = "nyc";
    let second = [
        "chicago", "boston", "denver", "austin", "miami", "dallas", "omaha",
    ]
    .into_iter()
    .find(|slug| owner(&owners, &format!("{{{slug}}}")) != owner(&owners, "{nyc}"))
    .expect("a slug on another node");
    let cities: [(&str, f64, f64); 2] = [(first, 40.75, -73.98), (second, 41.88, -87.63)];
    let mut markets = HashMap::new();
    for (slug, lat, lon) in cities {
        let created = app
            .post_as(
                "/v1/markets",
                Role::Operator,
                OPERATOR,
                &json!({"slug": slug, "name": slug, "time_zone": "America/Chicago",
                        "center": {"lat": lat, "lon": lon}, "radius_km": 25.0}),
            )
            .await;
        assert_eq!(created.status().as_u16(), 201);
        assert!(created.headers().contains_key("ratelimit-remaining"));
        let body: Value = created.json().await.expect("json");
        markets.insert(slug, body["id"].as_i64().expect("id"));
    }

    let mut drivers = HashMap::new();
    for (slug, lat, lon) in cities {
        let driver = insert_driver(&app.db).await;
        app.go_online(driver).await;
        let reported = app
            .report(driver, json!({"lat": lat + 0.005, "lon": lon}))
            .await;
        assert_eq!(reported.status().as_u16(), 200);
        assert!(reported.headers().contains_key("ratelimit-remaining"));
        let body: Value = reported.json().await.expect("json");
        assert_eq!(body["result"], "available", "{slug}: {body}");
        drivers.insert(slug, driver);
        // Its market's keys are on the node that serves the market's tag.
        let avail = app.state.valkey.key(&format!("loc:{{{slug}}}:avail"));
        assert!(
            on_node(owner(&owners, &avail), &avail).await,
            "{slug}'s drivers are on its node"
        );
    }
    assert_ne!(
        owner(&owners, &app.state.valkey.key("loc:{nyc}:avail")),
        owner(
            &owners,
            &app.state.valkey.key(&format!("loc:{{{second}}}:avail"))
        ),
    );
    for (slug, lat, lon) in cities {
        assert_eq!(
            nearby_ids(&app, lat, lon, 5.0, 20).await,
            [drivers[slug]],
            "{slug}"
        );
    }

    // An order in each market is offered to that market's driver, who accepts it.
    for (slug, lat, lon) in cities {
        let cast = cast_at(&app, lat, lon).await;
        let mut body = order_body(&cast);
        body["delivery_address"]["lat"] = json!(lat + 0.01);
        body["delivery_address"]["lon"] = json!(lon);
        let placed = app
            .place_order(cast.customer, &format!("cluster-{slug}"), &body)
            .await;
        assert_eq!(placed.status().as_u16(), 201, "{slug}");
        let order = placed.json::<Value>().await.expect("json")["id"]
            .as_i64()
            .expect("id");
        assert!(
            eventually(Duration::from_secs(20), || async {
                app.status_of(order).await == "PLACED"
            })
            .await,
            "{slug}: the workers did not authorise the payment"
        );
        let confirmed = app
            .act(order, "confirm", Role::Restaurant, cast.restaurant)
            .await;
        assert_eq!(confirmed.status().as_u16(), 200);
        let market: i64 = sqlx::query_scalar("SELECT market_id FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .expect("order");
        assert_eq!(market, markets[slug]);
        let driver = drivers[slug];
        let poll = || async {
            let body: Value = app
                .get_as(
                    &format!("/v1/drivers/{driver}/offers"),
                    Role::Driver,
                    driver,
                )
                .await
                .json()
                .await
                .expect("json");
            body["offers"][0]["id"].as_i64()
        };
        assert!(
            eventually(Duration::from_secs(20), || async { poll().await.is_some() }).await,
            "{slug}: no offer reached the driver"
        );
        let offer = poll().await.expect("an offer");
        let accepted = app
            .post_as(
                &format!("/v1/offers/{offer}/accept"),
                Role::Driver,
                driver,
                &json!({}),
            )
            .await;
        assert_eq!(accepted.status().as_u16(), 200, "{slug}");
        assert_eq!(
            sqlx::query_scalar::<_, Option<i64>>("SELECT driver_id FROM orders WHERE id = $1")
                .bind(order)
                .fetch_one(&app.db)
                .await
                .expect("order"),
            Some(driver)
        );
    }

    // A third driver crosses from one node's market to the other's.
    let traveller = insert_driver(&app.db).await;
    app.go_online(traveller).await;
    let (_, lat, lon) = cities[0];
    app.report(traveller, json!({"lat": lat - 0.01, "lon": lon}))
        .await;
    assert!(
        nearby_ids(&app, lat - 0.01, lon, 5.0, 20)
            .await
            .contains(&traveller)
    );
    let (_, lat2, lon2) = cities[1];
    let crossed: Value = app
        .report(traveller, json!({"lat": lat2 - 0.01, "lon": lon2}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(crossed["result"], "available", "{crossed}");
    assert!(
        nearby_ids(&app, lat2 - 0.01, lon2, 5.0, 20)
            .await
            .contains(&traveller)
    );
    assert!(
        !nearby_ids(&app, lat - 0.01, lon, 5.0, 20)
            .await
            .contains(&traveller)
    );
    let moved: Option<i64> = sqlx::query_scalar("SELECT market_id FROM drivers WHERE id = $1")
        .bind(traveller)
        .fetch_one(&app.db)
        .await
        .expect("driver");
    assert_eq!(moved, Some(markets[second]));
}

#[tokio::test]
async fn an_orders_live_stream_carries_its_events_and_its_drivers_positions_on_the_cluster() {
    let app = spawn_app_with(TestAppOptions {
        valkey_cluster_nodes: cluster_nodes(),
        ..TestAppOptions::default()
    })
    .await;
    let _relay = app.spawn_relay();
    let _workers = app.spawn_workers();
    let cast = crate::helpers::cast(&app.db).await;
    let driver = app.online_driver_at(300.0).await;
    let order = app.placed_order(&cast).await;
    let path = format!("/v1/orders/{order}/events");
    let (mut customer, snapshot) = app.follow(&path, Role::Customer, cast.customer).await;
    assert_eq!(snapshot.json()["order"]["status"], "PLACED");

    app.act(order, "confirm", Role::Restaurant, cast.restaurant)
        .await;
    let offer = crate::events::pending_offer(&app, driver).await;
    assert_eq!(app.accept(offer, driver).await.status().as_u16(), 200);
    let seen = customer
        .until("driver_assigned", Duration::from_secs(20))
        .await;
    assert!(
        seen.iter()
            .any(|e| e.event == "order_status_changed" && e.json()["newStatus"] == "CONFIRMED"),
        "{seen:?}"
    );
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
    // On its way, the driver's reports reach the customer: published by the ingest script on
    // the market's node, heard by the process's one subscription on another.
    let here = TestApp::north_of_restaurant(100.0);
    let position = app
        .report_until_position(&mut customer, driver, here)
        .await
        .expect("a driver position reached the customer");
    assert_eq!(position["driverId"], driver);
    assert_eq!(position["orderId"], order);
}
