"""Prompts without a single right answer: the open evaluation set and the replay set.

The open set (explain, describe, list) measures behaviour through the KL divergence between the
adapter and the base model on the base model's own replies. The replay set is trained on, so it uses
other templates (advice, short writing, everyday how-to) and other subjects: a replayed prompt must
never teach the answer to an evaluated one.
"""

from __future__ import annotations

OPEN_TEMPLATES: dict[str, dict[str, str]] = {
    "explain": {"en": "Explain in two sentences {}.", "es": "Explica en dos frases {}."},
    "describe": {"en": "Describe {} in a few words.", "es": "Describe {} en pocas palabras."},
    "list": {"en": "List three {}.", "es": "Enumera tres {}."},
}

OPEN_SUBJECTS: dict[str, dict[str, tuple[str, ...]]] = {
    "explain": {
        "en": ("why the sky is blue", "how rain forms", "why we have seasons", "how a rainbow appears",
               "why leaves change colour in autumn", "how the heart works", "why the Moon has phases",
               "how a bicycle moves", "why ice floats on water", "how bees make honey",
               "why we need to sleep", "how a compass works"),
        "es": ("por qué el cielo es azul", "cómo se forma la lluvia", "por qué hay estaciones",
               "cómo aparece un arcoíris", "por qué las hojas cambian de color en otoño", "cómo funciona el corazón",
               "por qué la Luna tiene fases", "cómo se mueve una bicicleta", "por qué el hielo flota en el agua",
               "cómo fabrican miel las abejas", "por qué necesitamos dormir", "cómo funciona una brújula"),
    },
    "describe": {
        "en": ("a beach in summer", "a forest", "an elephant", "a busy market", "a thunderstorm",
               "the night sky", "a snowy mountain", "a library", "a lion", "a river"),
        "es": ("una playa en verano", "un bosque", "un elefante", "un mercado concurrido", "una tormenta",
               "el cielo de noche", "una montaña nevada", "una biblioteca", "un león", "un río"),
    },
    "list": {
        "en": ("fruits", "musical instruments", "farm animals", "sports played with a ball", "vegetables",
               "things found in a kitchen", "means of transport", "colours of the rainbow", "wild animals",
               "jobs in a hospital"),
        "es": ("frutas", "instrumentos musicales", "animales de granja", "deportes que se juegan con pelota",
               "verduras", "cosas que hay en una cocina", "medios de transporte", "colores del arcoíris",
               "animales salvajes", "trabajos en un hospital"),
    },
}

REPLAY_TEMPLATES: dict[str, dict[str, str]] = {
    "advice": {"en": "Give me one tip for {}.", "es": "Dame un consejo para {}."},
    "sentence": {"en": "Write a short sentence about {}.", "es": "Escribe una frase corta sobre {}."},
    "howto": {"en": "How do I {}?", "es": "¿Cómo puedo {}?"},
    "greeting": {"en": "Write a friendly message to {}.", "es": "Escribe un mensaje amable para {}."},
}

REPLAY_SUBJECTS: dict[str, dict[str, tuple[str, ...]]] = {
    "advice": {
        "en": ("studying for an exam", "saving money", "keeping a room tidy", "making new friends",
               "drinking more water", "waking up early", "learning to cook", "staying calm before a test",
               "reading more books", "planning a trip", "taking care of a plant", "writing a diary"),
        "es": ("estudiar para un examen", "ahorrar dinero", "tener la habitación ordenada", "hacer nuevos amigos",
               "beber más agua", "levantarse temprano", "aprender a cocinar", "estar tranquilo antes de una prueba",
               "leer más libros", "planear un viaje", "cuidar una planta", "escribir un diario"),
    },
    "sentence": {
        "en": ("a rainy afternoon", "a birthday party", "a new pair of shoes", "a walk in the park",
               "a cup of tea", "a school trip", "a football match", "a quiet morning", "a lost umbrella",
               "a family dinner", "a museum visit", "a summer holiday"),
        "es": ("una tarde de lluvia", "una fiesta de cumpleaños", "unos zapatos nuevos", "un paseo por el parque",
               "una taza de té", "una excursión del colegio", "un partido de fútbol", "una mañana tranquila",
               "un paraguas perdido", "una cena familiar", "una visita al museo", "unas vacaciones de verano"),
    },
    "howto": {
        "en": ("make a paper plane", "boil an egg", "tie my shoelaces", "wrap a present", "set an alarm",
               "write a thank-you note", "pack a suitcase", "fold a shirt", "make a sandwich",
               "clean my glasses", "choose a good password", "introduce myself in class"),
        "es": ("hacer un avión de papel", "cocer un huevo", "atarme los cordones", "envolver un regalo",
               "poner una alarma", "escribir una nota de agradecimiento", "hacer una maleta", "doblar una camisa",
               "preparar un bocadillo", "limpiar mis gafas", "elegir una buena contraseña",
               "presentarme en clase"),
    },
    "greeting": {
        "en": ("a new neighbour", "a classmate who is ill", "a teacher at the end of the year",
               "a friend who moved away", "my grandmother", "a new team member"),
        "es": ("un vecino nuevo", "un compañero que está enfermo", "una profesora a final de curso",
               "un amigo que se ha mudado", "mi abuela", "una compañera nueva del equipo"),
    },
}
