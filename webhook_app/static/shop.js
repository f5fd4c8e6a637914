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
        return response.json().catch(function () { return {}; });
      });
  }

  /* A refusal either sends the buyer to another screen (a new price, stock gone) or is said here. */
  function refused(answer) {
    if (answer.redirect && answer.navigate) {
      window.location.assign(answer.redirect);
    } else {
      showError((answer.error && answer.error.message) || form.dataset.failed);
    }
  }

  async function pay() {
    var placed = await post(form.action);
    if (placed.error) {
      return refused(placed);
    }
    if (placed.hold) {
      /* The order is placed: its stock is held until a known time now. */
      document.getElementById("hold").textContent = placed.hold;
    }
    if (!placed.setup_client_secret) {
      /* Paid already (a second tab, a double click): the complete screen says what happened. */
      return window.location.assign(placed.complete_url);
    }
    var setup = await stripe.confirmCardSetup(placed.setup_client_secret, { payment_method: { card: card } });
    if (setup.error) {
      return showError(setup.error.message || form.dataset.authFailed);
    }
    var paymentMethod = setup.setupIntent.payment_method;
    if (typeof paymentMethod === "object" && paymentMethod) {
      paymentMethod = paymentMethod.id;
    }
    var confirmed = await post(form.dataset.payUrl, { payment_method: paymentMethod });
    if (confirmed.error) {
      return refused(confirmed);
    }
    if (confirmed.status === "requires_action") {
      var result = await stripe.confirmCardPayment(confirmed.client_secret);
      var status = result.paymentIntent && result.paymentIntent.status;
      if (result.error || (status !== "succeeded" && status !== "processing")) {
        return showError(form.dataset.authFailed);
      }
    }
    window.location.assign(confirmed.complete_url);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    button.disabled = true;
    button.textContent = form.dataset.paying;
    pay().catch(function () {
      showError(form.dataset.failed);
    });
  });
}());
