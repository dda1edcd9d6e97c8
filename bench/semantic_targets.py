"""Concept targets for bench/semantic_eval.py, written the way an operator would (about ten minutes each).

Examples and counterexamples were written from general knowledge, not copied from the evaluation probes.
`terms` are the names an operator would give the surface layer; the evaluation removes them from the positive
texts so that only the semantic layers can catch what is left.

TUNE targets pick the scoring method and its settings; REPORT targets only ever get reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalTarget:
    id: str
    terms: list[str]
    description: str
    examples: list[str]
    counterexamples: list[str]
    split: str  # "tune" or "report"
    extra: dict = field(default_factory=dict)


TARGETS = [
    # ---- tuning targets (ConceptVectors "forget" rows, RETURN retain_eval) ----
    EvalTarget(
        id="baseball",
        split="tune",
        terms=["baseball", "MLB", "Major League Baseball"],
        description="The sport of baseball: its rules, teams, players, leagues and history.",
        examples=[
            "The pitcher threw a curveball and the batter struck out swinging.",
            "A home run over the left field wall brought in three runs.",
            "The World Series is played between the champions of the American and National Leagues.",
            "Nine innings make a regulation game, with extra innings if the score is tied.",
            "The shortstop fielded the grounder and threw to first for the out.",
            "Babe Ruth and Jackie Robinson are legends of the game played on a diamond.",
            "The catcher signals pitches from behind home plate.",
            "A batting average above .300 is considered excellent.",
        ],
        counterexamples=[
            "The cricket match lasted five days and ended in a draw.",
            "The quarterback threw a touchdown pass in the final minute.",
            "The basketball team won the championship in overtime.",
            "She plays softball at the park with her friends on weekends.",
            "The tennis player served an ace to win the set.",
            "The bat flew out of the cave at dusk.",
        ],
    ),
    EvalTarget(
        id="shakespeare",
        split="tune",
        terms=["William Shakespeare", "Shakespeare", "Shakespearean", "Bard of Avon"],
        description="The English playwright and poet William Shakespeare, his plays, sonnets, life and theatre.",
        examples=[
            "The playwright from Stratford-upon-Avon wrote Hamlet, Macbeth and King Lear.",
            "To be, or not to be, that is the question.",
            "Romeo and Juliet are star-crossed lovers from feuding families in Verona.",
            "His company performed at the Globe Theatre in London.",
            "He wrote 154 sonnets, including 'Shall I compare thee to a summer's day?'.",
            "The Elizabethan dramatist married Anne Hathaway and died in 1616.",
            "Prospero, a magician on an island, is the hero of The Tempest.",
            "The First Folio collected his comedies, histories and tragedies in 1623.",
        ],
        counterexamples=[
            "Christopher Marlowe wrote Doctor Faustus.",
            "Charles Dickens wrote Oliver Twist and Great Expectations.",
            "The Greek tragedies of Sophocles were performed in open-air theatres.",
            "Queen Elizabeth I ruled England for forty-four years.",
            "The poet John Keats wrote odes to a nightingale and to autumn.",
            "The theatre downtown is staging a new musical this winter.",
        ],
    ),
    EvalTarget(
        id="glenn-gould",
        split="tune",
        terms=["Glenn Gould", "Gould"],
        description="The Canadian pianist Glenn Gould, his recordings, especially of Bach, and his life.",
        examples=[
            "The Canadian pianist became famous for his 1955 recording of Bach's Goldberg Variations.",
            "He hummed audibly while playing and sat on a low chair his father had made.",
            "The Toronto-born musician stopped giving public concerts in 1964 to work only in the studio.",
            "His eccentric habits included wearing gloves and a scarf even in summer.",
            "He re-recorded the Goldberg Variations in 1981, shortly before his death.",
            "The pianist made radio documentaries such as The Idea of North.",
            "His fast, detached playing of Bach's keyboard works divided critics.",
            "He died in 1982 in Toronto after a stroke, at the age of fifty.",
        ],
        counterexamples=[
            "Vladimir Horowitz was a celebrated Russian-American pianist.",
            "Johann Sebastian Bach composed the Brandenburg Concertos.",
            "Leonard Cohen was a Canadian singer and poet.",
            "The piano has eighty-eight keys.",
            "Toronto is the largest city in Canada.",
            "Martha Argerich is an Argentine pianist known for Chopin and Prokofiev.",
        ],
    ),
    # ---- tuning targets with a German slice (ConceptVectors qa_german rows): English examples, German probes ----
    EvalTarget(
        id="netflix",
        split="tune",
        terms=["Netflix"],
        description="The streaming company Netflix: its service, its original series and films, its history.",
        examples=[
            "The streaming service started by mailing DVDs in red envelopes before moving online.",
            "Subscribers binge-watch Stranger Things and The Crown on the platform.",
            "Reed Hastings and Marc Randolph founded the company in 1997 in California.",
            "The service's recommendation algorithm suggests what to watch next.",
            "Its monthly subscription plans range from a basic tier with ads to premium 4K.",
            "The company produces original shows such as House of Cards and Squid Game.",
            "Members can download episodes to watch offline on their phones.",
            "The platform is available in more than 190 countries.",
        ],
        counterexamples=[
            "Blockbuster rented videotapes from thousands of stores.",
            "Disney+ streams Marvel and Pixar films.",
            "YouTube lets anyone upload videos for free.",
            "The cinema on Main Street shows films every evening.",
            "Spotify streams music and podcasts.",
            "The fishing net was torn and needed mending.",
        ],
    ),
    EvalTarget(
        id="austria",
        split="tune",
        terms=[
            "Austria",
            "Austrian",
            "Austrians",
            "Österreich",
            "Österreichs",
            "Österreicher",
            "österreichisch",
            "österreichische",
            "österreichischen",
            "österreichischer",
        ],
        description="The country Austria: its geography, history, cities, culture and politics.",
        examples=[
            "Vienna, the capital on the Danube, is famous for its coffee houses and the Vienna State Opera.",
            "The Alpine republic borders Germany, Switzerland, Italy, Hungary and the Czech Republic.",
            "Mozart was born in Salzburg, a city known for its music festival.",
            "The Habsburg dynasty ruled the empire from the Hofburg palace for centuries.",
            "Innsbruck in Tyrol hosted the Winter Olympics twice.",
            "The country has been neutral since 1955 and joined the European Union in 1995.",
            "Wiener Schnitzel and Sachertorte are national dishes.",
            "The Grossglockner is the highest mountain in the country.",
        ],
        counterexamples=[
            "Switzerland is known for its banks, watches and cheese.",
            "Berlin is the capital of Germany.",
            "Australia is home to kangaroos and the Great Barrier Reef.",
            "Budapest lies on both banks of the Danube.",
            "Skiing in the Rocky Mountains is popular in winter.",
            "Beethoven composed nine symphonies.",
        ],
    ),
    # ---- report targets: never used to choose a method or a setting ----
    EvalTarget(
        id="star-wars",
        split="report",
        terms=["Star Wars", "Luke Skywalker", "Skywalker", "Darth Vader", "Jedi"],
        description="The Star Wars film franchise created by George Lucas: its films, characters, planets and lore.",
        examples=[
            "A farm boy learns to use the Force and joins the Rebel Alliance against the Galactic Empire.",
            "The masked Sith lord breathes heavily and reveals that he is the hero's father.",
            "Han Solo flies the Millennium Falcon with his Wookiee co-pilot Chewbacca.",
            "Princess Leia hides the Death Star plans inside the droid R2-D2.",
            "Yoda trains young knights on the swamp planet Dagobah.",
            "George Lucas released the first film, A New Hope, in 1977.",
            "Stormtroopers of the Empire pursue the rebels across the galaxy far, far away.",
            "Obi-Wan Kenobi gives the young hero his father's lightsaber.",
        ],
        counterexamples=[
            "Captain Kirk commands the starship Enterprise.",
            "The astronauts landed on the moon in 1969.",
            "Frodo carries the ring to Mount Doom.",
            "The science fiction novel describes a war between two planets.",
            "The night sky was full of bright stars.",
            "Steven Spielberg directed Jaws and E.T.",
        ],
    ),
    EvalTarget(
        id="super-mario",
        split="report",
        terms=["Super Mario", "Mario", "Luigi"],
        description="Nintendo's Super Mario video game series: the plumber hero, his brother, the princess and "
        "the Mushroom Kingdom.",
        examples=[
            "The Italian plumber in red overalls jumps on Goombas and Koopa Troopas.",
            "Princess Peach has been kidnapped by Bowser, the king of the Koopas, again.",
            "Eating a Super Mushroom makes the hero grow, and a Fire Flower lets him throw fireballs.",
            "His taller brother in green wears an L on his cap.",
            "Yoshi, the green dinosaur, lets the hero ride on his back.",
            "Warp pipes lead to underground levels full of coins.",
            "Shigeru Miyamoto designed the platformer for the Nintendo Entertainment System in 1985.",
            "The kart racing spin-off features banana peels and red shells.",
        ],
        counterexamples=[
            "Sonic the Hedgehog runs at supersonic speed collecting rings.",
            "Link explores Hyrule to rescue Princess Zelda.",
            "The plumber fixed the leaking pipe under the kitchen sink.",
            "Pac-Man eats dots while ghosts chase him through a maze.",
            "The mushroom soup was made with fresh chanterelles.",
            "Nintendo was founded in Kyoto in 1889 as a playing card company.",
        ],
    ),
    EvalTarget(
        id="harry-potter",
        split="report",
        terms=["Harry Potter", "Harry", "Potter", "Hogwarts", "Hermione", "Voldemort", "Dumbledore", "Ron Weasley"],
        description="J. K. Rowling's Harry Potter books and films: the boy wizard, his school of witchcraft and "
        "wizardry, his friends and the dark lord.",
        examples=[
            "An orphan boy with a lightning-bolt scar learns on his eleventh birthday that he is a wizard.",
            "The Sorting Hat places new students into Gryffindor, Slytherin, Ravenclaw or Hufflepuff.",
            "He rides a broomstick as Seeker in Quidditch matches and chases the Golden Snitch.",
            "The Hogwarts Express leaves London from Platform Nine and Three-Quarters.",
            "The dark wizard He-Who-Must-Not-Be-Named split his soul into Horcruxes.",
            "Severus Snape teaches Potions and seems to hate the boy who lived.",
            "Muggles are people without magical powers, like the Dursleys.",
            "J. K. Rowling published the first of the seven books in 1997.",
        ],
        counterexamples=[
            "Gandalf the Grey guides the hobbits on their journey.",
            "Merlin was the wizard who advised King Arthur.",
            "Dorothy follows the yellow brick road to the Emerald City.",
            "The boarding school in the English countryside has a rowing team.",
            "The stage magician pulled a rabbit out of a hat.",
            "In the fantasy game, a sorcerer casts a fireball at the goblins.",
        ],
    ),
    EvalTarget(
        id="edgar-allan-poe",
        split="report",
        terms=["Edgar Allan Poe", "Edgar Poe", "Poe"],
        description="The American writer Edgar Allan Poe: his life, his poems, his tales of mystery and horror.",
        examples=[
            "The American author of The Raven, whose bird repeats 'Nevermore'.",
            "He wrote The Tell-Tale Heart, in which a murderer hears the beating heart under the floorboards.",
            "His detective C. Auguste Dupin solved The Murders in the Rue Morgue.",
            "The Boston-born writer was raised by John Allan in Richmond, Virginia.",
            "He married his young cousin Virginia Clemm, who died of tuberculosis.",
            "He died mysteriously in Baltimore in 1849 at the age of forty.",
            "The Fall of the House of Usher is one of his gothic tales.",
            "He is credited with inventing the modern detective story.",
        ],
        counterexamples=[
            "H. P. Lovecraft wrote tales of cosmic horror.",
            "Nathaniel Hawthorne wrote The Scarlet Letter.",
            "Arthur Conan Doyle created Sherlock Holmes.",
            "Ravens are intelligent birds that can solve puzzles.",
            "Baltimore is the largest city in Maryland.",
            "Mary Shelley wrote Frankenstein in 1818.",
        ],
    ),
]
