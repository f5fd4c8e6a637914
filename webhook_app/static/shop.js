/* The confirmation screen's "Pay": place the order, let Stripe.js collect the card (the card
   goes to Stripe, never to the shop), have the server confirm the order's PaymentIntent with
   the resulting PaymentMethod, and finish 3-D Secure with Stripe.js when Stripe asks for it.
   Plain JavaScript, no build step. Without it the form still places the order and says that
   card entry needs JavaScript. */
(function () {
  "use strict";
  var form = document.getElementById("pay-form");
  if (!form || typeof window.Stripe !== "function") {
    return;
  }
  var stripe = window.Stripe(form.dataset.stripeKey);
  var card = stripe.elements().create("card", { hidePostalCode: false });
  card.mount("#card-element");

  var csrfToken = document.querySelector("meta[name=csrf-token]").content;
  var button = document.getElementById("pay");
  var buttonLabel = button.textContent;
  var errorBox = document.getElementById("pay-error");

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    button.disabled = false;
    button.textContent = buttonLabel;
  }

  /* The answer as {ok, status, body}: body is null when it is not a JSON object (a proxy's HTML
     502 or 504 page), so the steps below never read fields that are not there. */
  function post(url, json) {
    var headers = { "Accept": "application/json", "X-CSRFToken": csrfToken };
    var body;
    if (json) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else {
      /* Every field of the form, as posting it without the script does: the CSRF token, and the
         fingerprint of what the screen shows, so details changed in another tab since are refused. */
      body = new URLSearchParams(new FormData(form));
    }
    return fetch(url, { method: "POST", headers: headers, body: body, credentials: "same-origin" })
      .then(function (response) {
        return response.json().catch(function () { return null; }).then(function (answer) {
          var isObject = answer !== null && typeof answer === "object" && !Array.isArray(answer);
          return { ok: response.ok, status: response.status, body: isObject ? answer : null };
        });
      });
  }

  function isText(value) {
    return typeof value === "string" && value.length > 0;
  }

  /* The shop's own refusal: {"error": {...}, "redirect", "navigate"} (or a bare error it says here). */
  function isRefusal(answer) {
    return answer.body !== null && typeof answer.body.error === "object" && answer.body.error !== null;
  }

  /* A refusal either sends the buyer to another screen (a new price, stock gone) or is said here. */
  function refused(answer) {
    if (isText(answer.redirect) && answer.navigate) {
      window.location.assign(answer.redirect);
    } else {
      showError((answer.error && answer.error.message) || form.dataset.failed);
    }
  }

  /* The order's complete screen once its card has gone to the server to be charged: from then on a
     failure of this script (Stripe.js throwing inside 3-D Secure, say) must not read as "could not
     reach the payment service"; the complete screen says what became of the payment. */
  var chargedOrNot = null;

  async function pay() {
    chargedOrNot = null;
    var placed;
    try {
      placed = await post(form.action);
    } catch (error) {
      placed = { ok: false, status: 0, body: null };  /* no answer at all */
    }
    if (isRefusal(placed)) {
      return refused(placed.body);
    }
    if (!placed.ok || placed.body === null || !isText(placed.body.complete_url)) {
      /* No card was sent yet: say so and let the buyer press Pay again (the same order answers). */
      return showError(form.dataset.noAnswer);
    }
    var order = placed.body;
    if (isText(order.hold)) {
      /* The order is placed: its stock is held until a known time now. */
      document.getElementById("hold").textContent = order.hold;
    }
    if (!isText(order.setup_client_secret)) {
      /* Paid already (a second tab, a double click): the complete screen says what happened. */
      return window.location.assign(order.complete_url);
    }
    if (!isText(order.order_id)) {
      return showError(form.dataset.noAnswer);
    }
    var setup = await stripe.confirmCardSetup(order.setup_client_secret, { payment_method: { card: card } });
    if (setup.error) {
      return showError(setup.error.message || form.dataset.authFailed);
    }
    var paymentMethod = setup.setupIntent.payment_method;
    if (typeof paymentMethod === "object" && paymentMethod) {
      paymentMethod = paymentMethod.id;
    }
    /* From here the card may be charged whatever comes back: an answer the page cannot read (or
       none) sends the buyer to the order's complete screen, which says what happened. */
    var confirmed;
    chargedOrNot = order.complete_url;
    try {
      /* The order this page placed: the server refuses to charge another one placed since. */
      confirmed = await post(form.dataset.payUrl, { payment_method: paymentMethod, order_id: order.order_id });
    } catch (error) {
      return window.location.assign(order.complete_url);
    }
    if (isRefusal(confirmed) && (isText(confirmed.body.redirect) || confirmed.status < 500)) {
      return refused(confirmed.body);
    }
    var answer = confirmed.body;
    if (!confirmed.ok || answer === null || !isText(answer.status)) {
      return window.location.assign(order.complete_url);
    }
    if (answer.status === "requires_action") {
      if (!isText(answer.client_secret)) {
        return window.location.assign(order.complete_url);
      }
      var result = await stripe.confirmCardPayment(answer.client_secret);
      var status = result.paymentIntent && result.paymentIntent.status;
      if (result.error || (status !== "succeeded" && status !== "processing")) {
        return showError(form.dataset.authFailed);
      }
    }
    window.location.assign(isText(answer.complete_url) ? answer.complete_url : order.complete_url);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    button.disabled = true;
    button.textContent = form.dataset.paying;
    pay().catch(function () {
      if (chargedOrNot) {
        window.location.assign(chargedOrNot);
      } else {
        showError(form.dataset.failed);
      }
    });
  });
}());
