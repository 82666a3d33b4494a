export const short = {
  en_US: 'Control plane and GPU arbiter for a small cluster of GPU hosts',
}

export const long = {
  en_US:
    'Arbiter shows what is loaded on each GPU host of your LAN, live, and decides who may ' +
    'change it and when: swap vLLM models from the dashboard, let cron jobs reserve the GPU ' +
    'with a swap lock, and reach every model through one OpenAI-compatible broker. It ' +
    'reaches your hosts over SSH and runs their model containers with Docker.',
}
